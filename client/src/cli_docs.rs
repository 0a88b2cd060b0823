//! Shell completions and man pages made from a binary's own clap definitions
//! (`tunneld completions bash`, `tunnelc man`), so they never drift from the CLI. Nothing here
//! runs unless one of these commands is given; packaging installs their output
//! (docs/operations.md#installing).

use std::io::Write;
use std::path::{Path, PathBuf};

/// The two commands both binaries offer, flattened into their subcommand enums.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum DocsCmd {
    /// Print the completion script for SHELL on stdout.
    ///
    /// Install it where the shell looks for completions (docs/operations.md#installing).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) on stdout, or write one per subcommand with --dir.
    ///
    /// With --dir DIR: the program's page and one for every subcommand (`tunneld.1`,
    /// `tunneld-token.1`, `tunneld-token-add.1`, ...), created in DIR.
    Man {
        /// Write the pages into DIR instead of the program's page on stdout.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
}

/// Failures writing completions or man pages.
#[derive(Debug, thiserror::Error)]
pub enum DocsError {
    #[error("writing to stdout: {0}")]
    Stdout(std::io::Error),
    #[error("writing man pages into {dir}: {source}")]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// tunneld's man page: where an installed tunneld keeps things, its environment, signals.
pub const TUNNELD_MAN_EXTRA: &str = r#".SH FILES
.TP
\fI/etc/tunneld/server.yaml\fR
The configuration of an installed tunneld; \fBtunneld.service\fR passes it with \fB\-\-config\fR. Run the \fBtoken\fR, \fBrendezvous\fR and \fBstate\fR commands with the same \fB\-\-config\fR, as the \fBtunneld\fR user, so they use the daemon's store. Without \fB\-\-config\fR tunneld runs its embedded default, which keeps its state in \fI./state\fR.
.TP
\fI/var/lib/tunneld\fR
The state directory (\fBstate_dir\fR) of an installed tunneld: \fIstate.db\fR (tokens, provisioned tunnels, certificates, rendezvous ids), \fItls/\fR (its CA, whose key must stay private, and server certificate) and \fIssh/\fR (the ssh transport's host key).
.SH ENVIRONMENT
.TP
\fBTUNNELD_\fIKEY\fR
Sets a configuration key over the file; nested keys are joined by \fB__\fR, e.g. \fBTUNNELD_STATE_DIR=/var/lib/tunneld\fR or \fBTUNNELD_ADMIN__LISTEN=127.0.0.1:9000\fR. \fB\-\-set\fR overrides it.
.TP
\fBRUST_LOG\fR
The log filter; overrides \fB\-\-log\-level\fR and \fBlog.level\fR.
.SH SIGNALS
SIGTERM or SIGINT: new visitors are turned away, open visitor connections finish within \fBlimits.drain_timeout\fR, then tunneld exits; a second signal exits at once.
.SH "EXIT STATUS"
0 on success; 1 for an invalid configuration (\fB\-\-check\fR too) or a failed command.
.SH "SEE ALSO"
\fBtunnelc\fR(1), \fBsystemd.exec\fR(5)
"#;

/// tunnelc's man page: its files, environment and exit codes.
pub const TUNNELC_MAN_EXTRA: &str = r#".SH FILES
.TP
\fI/etc/tunneld/client\-NAME.yaml\fR
The configuration \fBtunnelc@NAME.service\fR runs.
.TP
\fI$XDG_CONFIG_HOME/tunnelc/config.yaml\fR
Defaults of \fBtunnelc http\fR (else \fI~/.config/tunnelc/config.yaml\fR).
.TP
\fI$XDG_DATA_HOME/tunnelc/NAME/\fR
What \fBtunnelc setup\fR writes for the tunnel NAME (else \fI~/.local/share/tunnelc/NAME/\fR; \fB\-\-dir\fR or \fBTUNNELC_DIR\fR choose another directory).
.SH ENVIRONMENT
.TP
\fBTUNNELC_\fIKEY\fR
Sets a configuration key over the file; nested keys are joined by \fB__\fR. \fB\-\-set\fR overrides it.
.TP
\fBRUST_LOG\fR
The log filter; overrides \fB\-\-log\-level\fR and \fBlog.level\fR.
.SH "EXIT STATUS"
0 on success; 1 for an invalid configuration (\fB\-\-check\fR too) or a failed command; 2 when retrying cannot help (an untrusted certificate, a port of another transport, a refused token or every tunnel refused) and for bare \fBtunnelc\fR.
.SH "SEE ALSO"
\fBtunneld\fR(1)
"#;

impl DocsCmd {
    /// Writes what was asked for `cmd` (the binary's `Cli::command()`). `extra_roff` is
    /// appended to the program's own page (FILES, ENVIRONMENT sections, in roff).
    pub fn run(&self, cmd: clap::Command, extra_roff: &str) -> Result<(), DocsError> {
        match self {
            DocsCmd::Completions { shell } => {
                let mut cmd = cmd;
                let name = cmd.get_name().to_string();
                let mut out = Vec::new();
                clap_complete::generate(*shell, &mut cmd, name, &mut out);
                write_stdout(&out)
            }
            DocsCmd::Man { dir: None } => {
                let mut out = Vec::new();
                clap_mangen::Man::new(cmd)
                    .render(&mut out)
                    .map_err(DocsError::Stdout)?;
                out.extend_from_slice(extra_roff.as_bytes());
                write_stdout(&out)
            }
            DocsCmd::Man { dir: Some(dir) } => write_dir(cmd, dir, extra_roff),
        }
    }

    /// [`run`](Self::run) with the program's own man page sections (chosen by `cmd`'s name),
    /// then exit: 0 when written, 1 with the error prefixed by the program's name otherwise.
    pub fn run_and_exit(&self, cmd: clap::Command) -> ! {
        let program = cmd.get_name().to_string();
        let extra = match program.as_str() {
            "tunneld" => TUNNELD_MAN_EXTRA,
            "tunnelc" => TUNNELC_MAN_EXTRA,
            _ => "",
        };
        match self.run(cmd, extra) {
            Ok(()) => std::process::exit(0),
            Err(e) => {
                eprintln!("{program}: {e}");
                std::process::exit(1)
            }
        }
    }
}

/// A closed stdout (`tunneld man | head`) is the reader's choice, not an error.
fn write_stdout(bytes: &[u8]) -> Result<(), DocsError> {
    let mut out = std::io::stdout().lock();
    match out.write_all(bytes).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => Err(DocsError::Stdout(e)),
        _ => Ok(()),
    }
}

fn write_dir(cmd: clap::Command, dir: &Path, extra_roff: &str) -> Result<(), DocsError> {
    let err = |source| DocsError::Dir {
        dir: dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(err)?;
    let main = dir.join(format!("{}.1", cmd.get_name()));
    clap_mangen::generate_to(cmd, dir).map_err(err)?;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(&main)
        .map_err(err)?;
    f.write_all(extra_roff.as_bytes()).map_err(err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd() -> clap::Command {
        clap::Command::new("demo")
            .version("1.0")
            .about("A demo program.")
            .arg(clap::Arg::new("config").long("config").help("The file."))
            .subcommand(clap::Command::new("token").subcommand(clap::Command::new("add")))
    }

    #[test]
    fn man_dir_has_a_page_per_command_and_the_extra_section() {
        let dir = std::env::temp_dir().join(format!("tunneld-cli-docs-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        DocsCmd::Man {
            dir: Some(dir.clone()),
        }
        .run(cmd(), ".SH FILES\nsomewhere\n")
        .expect("written");
        let main = std::fs::read_to_string(dir.join("demo.1")).expect("demo.1");
        assert!(main.starts_with(".ie"), "roff: {main}");
        assert!(main.contains(".SH FILES\nsomewhere\n"), "{main}");
        assert!(main.contains("\\-\\-config"), "{main}");
        for page in ["demo-token.1", "demo-token-add.1"] {
            assert!(dir.join(page).exists(), "{page} missing");
        }
        let _ = std::fs::remove_dir_all(&dir);
    }
}
