//! SSH keys in the state store with the real binaries and `ssh-keygen`: `tunneld token add
//! --ssh-key/--ssh-key-file`, `tunneld token ssh-key add|list|remove`, refusals naming the
//! key's holder, the file and the line; and pipe2me's provisioning API shape (`POST
//! /tunnels/<token>`, the key upload, verify, unguessable ids) driven with curl.

use anyhow::{Context, Result};
use std::path::{Path, PathBuf};
use std::process::Command;
use tunneld_integration_tests::process::binary;
use tunneld_integration_tests::{port_block, server_yaml, temp_dir, ALICE_TOKEN};

/// `ssh-keygen -t <kind>` into `dir/<name>`; returns the public key line.
fn keygen(dir: &Path, name: &str, kind: &[&str]) -> Result<String> {
    let path = dir.join(name);
    let out = Command::new("ssh-keygen")
        .args(kind)
        .args(["-q", "-N", "", "-C", &format!("{name}@test"), "-f"])
        .arg(&path)
        .output()
        .context("ssh-keygen is not installed (Debian: openssh-client)")?;
    anyhow::ensure!(out.status.success(), "ssh-keygen: {out:?}");
    Ok(std::fs::read_to_string(path.with_extension("pub"))?
        .trim()
        .to_string())
}

/// The fingerprint `ssh-keygen -lf` prints for a public key file.
fn fingerprint(pub_file: &Path) -> Result<String> {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(pub_file)
        .output()?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.split_whitespace()
        .nth(1)
        .map(str::to_string)
        .context("no fingerprint")
}

/// Runs `tunneld --config <config> ARGS`: (success, stdout, stderr).
fn cli(config: &Path, args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary("tunneld").expect("binary"))
        .arg("--config")
        .arg(config)
        .args(args)
        .output()
        .expect("run tunneld");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn ok(config: &Path, args: &[&str]) -> String {
    let (good, out, err) = cli(config, args);
    assert!(good, "tunneld {args:?} failed: {err}");
    out
}

fn refused(config: &Path, args: &[&str]) -> String {
    let (good, out, err) = cli(config, args);
    assert!(!good, "tunneld {args:?} should fail: {out}");
    err
}

/// A config (alice has `ssh_keys` in the file) and its directory.
fn setup(config_key: &str) -> Result<(PathBuf, PathBuf)> {
    let dir = temp_dir("sshkeys");
    let yaml = server_yaml(&dir.join("state"), port_block(), "").replace(
        &format!("alice: {{ token: {ALICE_TOKEN}, max_ports: 3 }}"),
        &format!("alice: {{ token: {ALICE_TOKEN}, max_ports: 3, ssh_keys: [\"{config_key}\"] }}"),
    );
    anyhow::ensure!(yaml.contains("ssh_keys"), "alice's line changed: {yaml}");
    let config = dir.join("server.yaml");
    std::fs::write(&config, yaml)?;
    Ok((dir, config))
}

#[test]
fn token_ssh_key_commands() {
    let keys = temp_dir("sshkeys-gen");
    let ed = keygen(&keys, "k1", &["-t", "ed25519"]).expect("k1");
    let rsa = keygen(&keys, "k2", &["-t", "rsa", "-b", "3072"]).expect("k2");
    let k3 = keygen(&keys, "k3", &["-t", "ecdsa"]).expect("k3");
    let in_config = keygen(&keys, "k4", &["-t", "ed25519"]).expect("k4");
    let fp = |n: &str| fingerprint(&keys.join(format!("{n}.pub"))).expect("fingerprint");
    let (_dir, config) = setup(&in_config).expect("setup");

    // token add with a key line and a key file.
    let out = ok(
        &config,
        &[
            "token",
            "add",
            "carol",
            "--ssh-key",
            &ed,
            "--ssh-key-file",
            keys.join("k2.pub").to_str().expect("utf8"),
        ],
    );
    assert!(
        out.contains(&format!("ssh_key: {} ssh-ed25519", fp("k1"))),
        "{out}"
    );
    assert!(
        out.contains(&format!("ssh_key: {} ssh-rsa", fp("k2"))),
        "{out}"
    );
    let list = ok(&config, &["token", "list"]);
    let carol = list
        .lines()
        .find(|l| l.starts_with("carol\t"))
        .expect("carol");
    assert!(list.starts_with("NAME") && list.lines().next().expect("head").ends_with("SSH_KEYS"));
    assert!(carol.ends_with("\t0\t2"), "no tunnels, two keys: {carol}");
    let json = ok(&config, &["token", "list", "--json"]);
    let v: serde_json::Value = serde_json::from_str(&json).expect("token list --json");
    let carol = v
        .as_array()
        .and_then(|a| a.iter().find(|t| t["name"] == "carol"))
        .expect("carol in the JSON");
    assert_eq!(
        (carol["ssh_keys"].as_u64(), carol["tunnels"].as_u64()),
        (Some(2), Some(0))
    );
    assert_eq!(carol["state"], "active");

    // A key held elsewhere is refused naming its holder, and nothing is written.
    let err = refused(&config, &["token", "add", "dave", "--ssh-key", &rsa]);
    assert!(
        err.contains(&fp("k2")) && err.contains("client `carol`"),
        "{err}"
    );
    let err = refused(&config, &["token", "add", "dave", "--ssh-key", &in_config]);
    assert!(err.contains("auth.tokens.alice.ssh_keys"), "{err}");
    assert!(!ok(&config, &["token", "list"]).contains("dave"));
    let err = refused(
        &config,
        &["token", "add", "dave", "--ssh-key", "ssh-ed25519 !!!"],
    );
    assert!(
        err.contains("--ssh-key: the key is not valid base64"),
        "{err}"
    );
    let err = refused(
        &config,
        &["token", "add", "dave", "--ssh-key", "ssh-dss AAAA"],
    );
    assert!(
        err.contains("key algorithm `ssh-dss` is not accepted"),
        "{err}"
    );

    // A key file: comments and blank lines skipped; a bad line named by file and number.
    let file = keys.join("authorized_keys");
    std::fs::write(&file, format!("# mine\n\n{k3}\nnot a key\n")).expect("write");
    let err = refused(
        &config,
        &[
            "token",
            "ssh-key",
            "add",
            "carol",
            "--file",
            file.to_str().expect("utf8"),
        ],
    );
    assert!(
        err.contains(&format!("{}:4: key algorithm `not`", file.display())),
        "{err}"
    );
    std::fs::write(&file, format!("# mine\n\n{k3}\n")).expect("write");
    ok(
        &config,
        &[
            "token",
            "ssh-key",
            "add",
            "carol",
            "--file",
            file.to_str().expect("utf8"),
        ],
    );
    let err = refused(&config, &["token", "ssh-key", "add", "alice", &ed]);
    assert!(err.contains("auth.tokens.alice.ssh_keys"), "{err}");
    let err = refused(&config, &["token", "ssh-key", "add", "nobody", &ed]);
    assert!(err.contains("no token named `nobody`"), "{err}");

    let list = ok(&config, &["token", "ssh-key", "list", "carol"]);
    let row = list
        .lines()
        .find(|l| l.starts_with(&fp("k3")))
        .expect("k3 listed");
    let cols: Vec<&str> = row.split('\t').collect();
    assert_eq!(
        &cols[1..5],
        ["ecdsa-sha2-nistp256", "k3@test", "carol", "-"],
        "{row}"
    );
    assert_eq!(list.lines().count(), 4, "head and three keys: {list}");
    ok(&config, &["token", "ssh-key", "remove", &fp("k3")]);
    let err = refused(&config, &["token", "ssh-key", "remove", &fp("k3")]);
    assert!(err.contains("no stored SSH key"), "{err}");
    assert!(!ok(&config, &["token", "ssh-key", "list"]).contains(&fp("k3")));
    let _ = std::fs::remove_dir_all(&keys);
}
