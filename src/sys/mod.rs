//! The mechanism: what talks to the kernel and to other programs, with no
//! policy of its own. The master decides (`master/`), the worker serves
//! (`worker/`); both act through these.
//!
//! - `process`    fork (with the single-thread check), what every child does
//!   first (forget the master, keep only its fds), reap → `Exit`, kill, exit
//!   codes, the file limit, `/proc` reads
//! - `spawn`      one way to start every child: what it keeps, its name, its
//!   user, its death signal
//! - `signals`    the signal table, record-only handlers, the self-pipe
//! - `channel`    the master ↔ worker channel: messages, commands with an fd, EOF
//! - `listener`   every socket option; bound before any fork
//! - `steering`   load-aware steering: the SK_REUSEPORT program, its maps, the
//!   memory the workers write their load to
//! - `bpf`        the bpf(2) commands the steering needs
//! - `logfile`    `--log-file`, reopened on USR1
//! - `output`     the master's stdout and stderr: written at once or dropped, never waited on
//! - `hung`       a hung worker's stack, taken on the master's SIGABRT, in the log
//! - `scoreboard` shared memory: one record of atomics per worker, the monotonic clock
//! - `tickets`    shared memory: the TLS session-ticket keys the master writes
//! - `traffic`    in the scoreboard: request durations, queue waits, statuses, bytes
//! - `upgrade`    sockets handed in: by an old master (USR2) or by systemd (`LISTEN_FDS`)
//! - `sd_notify`  what the master tells systemd (sd_notify)
//! - `pidfile`    the pid file: atomic, 0644, never through a symlink
//! - `privileges` the user and group the workers run as (`--user`, `--group`)
//! - `exec`       exec mode, the child: fd 3, `LISTEN_FDS`, signals reset, `execvpe`
//! - `notify_socket`  exec mode: what the commands tell the master on its `NOTIFY_SOCKET`, senders told by the kernel
//! - `accepting`  exec mode: whether a program waits on its socket (from `/proc`)
//! - `orphans`    the master as child subreaper; which command an orphan came from

pub(crate) mod accepting;
pub(crate) mod bpf;
pub(crate) mod channel;
pub(crate) mod exec;
pub(crate) mod hung;
pub(crate) mod listener;
pub(crate) mod logfile;
pub(crate) mod notify_socket;
pub(crate) mod orphans;
pub(crate) mod output;
pub(crate) mod pidfile;
pub(crate) mod privileges;
pub(crate) mod process;
pub(crate) mod scoreboard;
pub(crate) mod sd_notify;
pub(crate) mod signals;
pub(crate) mod spawn;
pub(crate) mod steering;
pub(crate) mod tickets;
pub(crate) mod traffic;
pub(crate) mod upgrade;
