//! Where the master is in its life: serving, stopping, or halting on an error.
//! One value, so that "stopping" and "halting" cannot disagree.

use crate::error::Error;

/// How a stop goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Stop {
    /// Workers drain, then exit; killed at `--graceful-timeout` (plus a margin).
    Graceful,
    /// Workers exit now; killed after a short deadline.
    Fast,
}

pub(super) enum Phase {
    Running,
    /// A stop with `--shutdown-delay`: readiness fails while everything keeps
    /// serving, until this instant; then the workers drain.
    Leaving(std::time::Instant),
    /// A stop has begun: once every worker is gone, exit 0.
    Stopping(Stop),
    /// A stop because the master cannot go on: once every worker is gone, exit 1
    /// with the error.
    Halting(Stop, Error),
}

impl Phase {
    /// The stop under way, if any.
    pub(super) fn stop(&self) -> Option<Stop> {
        match self {
            Phase::Running | Phase::Leaving(_) => None,
            Phase::Stopping(stop) | Phase::Halting(stop, _) => Some(*stop),
        }
    }

    /// Serving as usual: no stop has begun (leaving rotation still serves).
    pub(super) fn is_running(&self) -> bool {
        matches!(self, Phase::Running | Phase::Leaving(_))
    }

    /// The end of the shutdown delay, while leaving rotation.
    pub(super) fn leaving_until(&self) -> Option<std::time::Instant> {
        match self {
            Phase::Leaving(until) => Some(*until),
            _ => None,
        }
    }

    /// The same phase with `stop` as its stop (a fast stop after a graceful one).
    pub(super) fn with_stop(self, stop: Stop) -> Phase {
        match self {
            Phase::Running | Phase::Leaving(_) | Phase::Stopping(_) => Phase::Stopping(stop),
            Phase::Halting(_, error) => Phase::Halting(stop, error),
        }
    }

    /// Halting with `error`, whatever stop was under way (the first error is kept).
    pub(super) fn halt(self, stop: Stop, error: Error) -> Phase {
        match self {
            Phase::Halting(old, first) => Phase::Halting(old, first),
            Phase::Running | Phase::Leaving(_) | Phase::Stopping(_) => Phase::Halting(stop, error),
        }
    }

    /// What the master returns once every worker is gone.
    pub(super) fn into_result(self) -> Result<(), Error> {
        match self {
            Phase::Halting(_, error) => Err(error),
            Phase::Running | Phase::Leaving(_) | Phase::Stopping(_) => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_halt_keeps_its_first_error_and_a_later_stop_only_changes_the_stop() {
        let phase = Phase::Running.halt(Stop::Graceful, Error::BootFailed { cause: "first".into() });
        let phase = phase.halt(Stop::Fast, Error::BootFailed { cause: "second".into() });
        let phase = phase.with_stop(Stop::Fast);
        assert_eq!(phase.stop(), Some(Stop::Fast));
        assert!(matches!(phase.into_result(), Err(Error::BootFailed { cause }) if cause == "first"));
        let phase = Phase::Running.with_stop(Stop::Graceful);
        assert!(!phase.is_running());
        assert!(phase.into_result().is_ok());
    }
}
