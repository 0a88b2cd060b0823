//! Shell completions load and name the subcommands, and the man pages are clean roff.

use crate::common::*;

const SUBCOMMANDS: [(&str, &[&str]); 2] = [
    (
        "tunneld",
        &["token", "rendezvous", "state", "completions", "man"],
    ),
    (
        "tunnelc",
        &[
            "tcp",
            "http",
            "setup",
            "list",
            "env",
            "test",
            "completions",
            "man",
        ],
    ),
];

#[test]
fn bash_completion_loads_and_completes_subcommands() {
    if !tool("bash", "bash", "bash_completion") {
        return;
    }
    for (program, subcommands) in SUBCOMMANDS {
        let dir = temp_dir("completion");
        let script = dir.join(program);
        std::fs::write(&script, docs(program, &["completions", "bash"])).expect("write");
        // Loaded as bash-completion would, then asked for `<program> <TAB>`.
        let probe = format!(
            r#"set -e; source {script}; complete -p {program}
COMP_WORDS=({program} ""); COMP_CWORD=1; COMP_LINE="{program} "; COMP_POINT=${{#COMP_LINE}}
_{program} {program} "" {program}; printf '%s\n' "${{COMPREPLY[@]}}""#,
            script = script.display()
        );
        let out = run(Command::new("bash").args(["--norc", "-c", &probe]));
        let _ = std::fs::remove_dir_all(&dir);
        let out_text = text(&out);
        assert!(out.status.success(), "{program}: {out_text}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let mut lines = stdout.lines();
        let registered = lines.next().unwrap_or("");
        assert!(
            registered.starts_with("complete ") && registered.ends_with(&format!(" {program}")),
            "{program}: complete -p printed {registered:?}"
        );
        let offered: Vec<&str> = lines.collect();
        for sub in subcommands {
            assert!(
                offered.contains(sub),
                "{program} <TAB> offers no {sub}: {offered:?}"
            );
        }
    }
}

#[test]
fn other_shells_get_scripts_naming_the_subcommands() {
    for (program, subcommands) in SUBCOMMANDS {
        for shell in ["zsh", "fish", "elvish", "powershell"] {
            let script = docs(program, &["completions", shell]);
            for sub in subcommands {
                assert!(script.contains(sub), "{program} {shell}: no {sub}");
            }
        }
        let out = run(Command::new(bin(program)).args(["completions", "tcsh"]));
        assert!(
            !out.status.success() && text(&out).contains("tcsh"),
            "an unknown shell is refused: {}",
            text(&out)
        );
    }
}

/// Checks roff with groff's man macros, every warning on: (clean, rendered text).
fn groff(roff: &[u8], what: &str) -> String {
    let dir = temp_dir("man");
    let file = dir.join("page.1");
    std::fs::write(&file, roff).expect("write");
    let out = run(Command::new("groff")
        .args(["-man", "-Tutf8", "-ww", "-P-cbou"])
        .arg(&file)
        .env("MANWIDTH", "100"));
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success() && out.stderr.is_empty(),
        "{what}: groff complains: {}",
        text(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn man_pages_are_clean_roff_with_the_installed_locations() {
    if !tool("groff", "groff-base", "man_pages") {
        return;
    }
    for (program, subcommands, location) in [
        ("tunneld", SUBCOMMANDS[0].1, "/var/lib/tunneld"),
        ("tunnelc", SUBCOMMANDS[1].1, "/etc/tunneld/client-NAME.yaml"),
    ] {
        let page = groff(docs(program, &["man"]).as_bytes(), program);
        for want in [
            "NAME",
            "SYNOPSIS",
            "--config",
            "FILES",
            "EXIT STATUS",
            location,
        ] {
            assert!(page.contains(want), "{program}(1) has no {want}:\n{page}");
        }
        for sub in subcommands {
            assert!(page.contains(sub), "{program}(1) names no {sub}");
        }
        // --dir: a page per subcommand, each clean.
        let dir = temp_dir("man-dir");
        docs(program, &["man", "--dir", dir.to_str().expect("utf8")]);
        let nested = if program == "tunneld" {
            "tunneld-token-add.1"
        } else {
            "tunnelc-setup.1"
        };
        let roff = std::fs::read(dir.join(nested)).unwrap_or_else(|e| panic!("{nested}: {e}"));
        let page = groff(&roff, nested);
        assert!(page.contains("SYNOPSIS"), "{nested}:\n{page}");
        let main = std::fs::read_to_string(dir.join(format!("{program}.1"))).expect("main page");
        assert!(
            main.contains(".SH FILES"),
            "{program}.1 in --dir has its FILES"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}

// ---------------------------------------------------------------- Dockerfile
