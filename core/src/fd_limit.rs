//! Open file descriptors. Every visitor connection, tunnel session, local connection and
//! kept-alive connection holds one, and the usual soft limit (1024, systemd's default among
//! them) is below one listener's default `max_connections` (4096): at start both programs
//! raise the soft limit to the hard one ([`raise`]), as nginx's `worker_rlimit_nofile` or Go's
//! runtime do. tunneld reports both on `/metrics` ([`FdCollector`]: `process_open_fds`,
//! `process_max_fds`, the names of Prometheus's own process collector).

use nix::sys::resource::{getrlimit, setrlimit, Resource, RLIM_INFINITY};
use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::IntGauge;

/// The soft limit asked for when the hard one is unlimited (Linux refuses more than
/// `fs.nr_open`, 1048576 by default).
const UNLIMITED_SOFT: u64 = 1 << 20;

/// Below this many descriptors a program is told (once, at start) that it may refuse
/// connections: one listener's default `max_connections`.
pub const ADVISED: u64 = 4096;

/// The open-file limit before and after [`raise`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raised {
    pub before: u64,
    pub now: u64,
}

/// Raises the soft open-file limit to the hard one (when that is unlimited, to
/// [`UNLIMITED_SOFT`] or the kernel's `fs.nr_open` if lower); never lowers it.
pub fn raise() -> Result<Raised, nix::Error> {
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE)?;
    let target = if hard == RLIM_INFINITY {
        UNLIMITED_SOFT
    } else {
        hard
    };
    if soft != RLIM_INFINITY && soft < target {
        if let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, target, hard) {
            // An unlimited hard limit above a lowered `fs.nr_open`: as far as the kernel goes.
            let nr_open = std::fs::read_to_string("/proc/sys/fs/nr_open")
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .filter(|n| hard == RLIM_INFINITY && *n > soft && *n < target)
                .ok_or(e)?;
            setrlimit(Resource::RLIMIT_NOFILE, nr_open, hard)?;
        }
    }
    let (now, _) = getrlimit(Resource::RLIMIT_NOFILE)?;
    Ok(Raised { before: soft, now })
}

/// What to log about the limit after [`raise`] (`program` names who speaks): `Ok` for an
/// info line, `Err` for a warning.
pub fn report(program: &str, r: Result<Raised, nix::Error>) -> Result<String, String> {
    match r {
        Ok(r) if r.now < ADVISED => Err(format!(
            "{program} may open only {} files at once (the hard limit): each visitor, session and local connection takes one; raise it (ulimit -Hn, systemd LimitNOFILE=)",
            r.now
        )),
        Ok(r) if r.now != r.before => Ok(format!(
            "open-file limit raised from {} to {}",
            r.before, r.now
        )),
        Ok(r) => Ok(format!("open-file limit {}", r.now)),
        Err(e) => Err(format!("cannot read or raise the open-file limit: {e}")),
    }
}

/// Descriptors open now. Linux 6.2 and later give the count as the size of `/proc/self/fd`
/// (one `stat`, however many are open); before, and elsewhere (`/dev/fd`), its entries are
/// counted, less the one the listing itself holds.
pub fn open_now() -> std::io::Result<u64> {
    if let Ok(m) = std::fs::metadata("/proc/self/fd") {
        if m.len() > 0 {
            return Ok(m.len());
        }
    }
    let dir = std::fs::read_dir("/proc/self/fd").or_else(|_| std::fs::read_dir("/dev/fd"))?;
    Ok((dir.count() as u64).saturating_sub(1))
}

/// `process_open_fds` and `process_max_fds`, read at each scrape.
pub struct FdCollector {
    open: IntGauge,
    max: IntGauge,
    descs: Vec<Desc>,
}

impl FdCollector {
    pub fn new() -> Result<Self, prometheus::Error> {
        let open = IntGauge::new("process_open_fds", "Open file descriptors")?;
        let max = IntGauge::new(
            "process_max_fds",
            "The open-file limit (soft; raised to the hard limit at start)",
        )?;
        let descs = open.desc().into_iter().chain(max.desc()).cloned().collect();
        Ok(Self { open, max, descs })
    }
}

impl Collector for FdCollector {
    fn desc(&self) -> Vec<&Desc> {
        self.descs.iter().collect()
    }

    /// A figure that cannot be read now (out of descriptors, say) is left out of the scrape
    /// rather than given stale.
    fn collect(&self) -> Vec<MetricFamily> {
        let mut out = Vec::new();
        if let Ok(n) = open_now() {
            self.open.set(i64::try_from(n).unwrap_or(i64::MAX));
            out.extend(self.open.collect());
        }
        if let Ok((soft, _)) = getrlimit(Resource::RLIMIT_NOFILE) {
            self.max.set(i64::try_from(soft).unwrap_or(i64::MAX));
            out.extend(self.max.collect());
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_ends_at_the_hard_one() {
        let r = raise().expect("rlimit");
        assert!(r.now >= r.before);
        let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).expect("rlimit");
        assert_eq!(soft, r.now);
        if hard != RLIM_INFINITY {
            assert_eq!(soft, hard);
        }
        // Raising again changes nothing.
        assert_eq!(raise().expect("rlimit").before, r.now);
    }

    #[test]
    fn reports_name_the_limit() {
        let low = report(
            "tunneld",
            Ok(Raised {
                before: 256,
                now: 1024,
            }),
        );
        assert!(low
            .expect_err("below the advice")
            .contains("only 1024 files"));
        let raised = report(
            "tunneld",
            Ok(Raised {
                before: 1024,
                now: 524288,
            }),
        );
        assert_eq!(
            raised.as_deref(),
            Ok("open-file limit raised from 1024 to 524288")
        );
    }

    #[test]
    fn the_count_follows_open_descriptors() {
        let before = open_now().expect("count");
        let files: Vec<std::fs::File> = (0..64)
            .map(|_| std::fs::File::open("/proc/self/stat").expect("open"))
            .collect();
        let during = open_now().expect("count");
        drop(files);
        // Other tests of this binary open and close a few files meanwhile.
        assert!(during + 16 >= before + 64, "{before} -> {during}");
    }

    #[test]
    fn the_collector_counts_open_descriptors() {
        let c = FdCollector::new().expect("gauges");
        let families = c.collect();
        let value = |name: &str| {
            families
                .iter()
                .find(|f| f.name() == name)
                .map(|f| f.get_metric()[0].get_gauge().get_value())
                .expect(name)
        };
        let open = value("process_open_fds");
        assert!(open >= 3.0, "stdin, stdout, stderr at least: {open}");
        assert!(value("process_max_fds") >= open);
    }
}
