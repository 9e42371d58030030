//! Integration tests: the real binary, real forks, real sockets on 127.0.0.1
//! port 0, real signals to the master pid.

mod abuse;
mod admin;
mod apps;
mod cli;
mod environment;
mod errors;
mod exec;
mod frameworks;
mod grpc;
mod health;
mod http2;
mod load;
mod logs;
mod operations;
mod output;
mod readme;
mod requests;
mod rotation;
mod serving;
mod setup;
mod steering;
mod stopping;
mod supervision;
mod systemd;
mod timeouts;
mod tls;
mod util;
mod visibility;
