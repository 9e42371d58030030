//! gRPC: a tonic client calls `examples/grpc` (tonic's helloworld Greeter, its
//! `Routes` served as they are) over h2c.

use std::time::Duration;

use crate::util::*;

#[path = "../../examples/grpc/messages.rs"]
mod messages;

use messages::{HelloReply, HelloRequest, SAY_HELLO};

/// One `SayHello` call with tonic's own client and transport.
async fn say_hello(addr: std::net::SocketAddr, name: &str) -> Result<String, Box<dyn std::error::Error>> {
    let channel = tonic::transport::Channel::from_shared(format!("http://{addr}"))?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    greet(channel, name).await
}

/// One `SayHello` call on `channel`.
async fn greet(channel: tonic::transport::Channel, name: &str) -> Result<String, Box<dyn std::error::Error>> {
    let mut client = tonic::client::Grpc::new(channel);
    client.ready().await?;
    let request = tonic::Request::new(HelloRequest { name: name.into() });
    let path = hyper::http::uri::PathAndQuery::from_static(SAY_HELLO);
    let codec = tonic_prost::ProstCodec::<HelloRequest, HelloReply>::default();
    let reply = client.unary(request, path, codec).await?;
    Ok(reply.into_inner().message)
}

#[test]
fn a_tonic_client_calls_the_greeter_on_every_worker() {
    let server = Server::start_command(command(example("grpc"), &["--workers", "2"]));
    let workers = server.wait_for_workers(2, Duration::from_secs(5));
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    // Fresh connections hash to both workers' sockets: every answer names one of them.
    for n in 0..6 {
        let message = runtime
            .block_on(say_hello(server.addr, &format!("client {n}")))
            .expect("the call succeeds");
        let pid = message
            .strip_prefix(&format!("Hello client {n} from worker "))
            .and_then(|pid| pid.parse::<i32>().ok())
            .unwrap_or_else(|| panic!("not the Greeter's reply: {message:?}"));
        assert!(
            workers.iter().any(|w| w.as_raw() == pid),
            "{pid} is not a worker of {workers:?}"
        );
    }
}

/// One `SayHello` call over TLS, trusting the test CA, with the client
/// certificate `identity` (a PEM certificate and key) if given.
async fn say_hello_tls(
    addr: std::net::SocketAddr,
    certs: &std::path::Path,
    identity: Option<&str>,
) -> Result<String, Box<dyn std::error::Error>> {
    use tonic::transport::{Certificate, ClientTlsConfig, Identity};
    let ca = Certificate::from_pem(std::fs::read(certs.join("ca.pem"))?);
    let mut tls = ClientTlsConfig::new().ca_certificate(ca).domain_name("localhost");
    if let Some(name) = identity {
        let cert = std::fs::read(certs.join(format!("{name}.pem")))?;
        let key = std::fs::read(certs.join(format!("{name}.key")))?;
        tls = tls.identity(Identity::from_pem(cert, key));
    }
    let channel = tonic::transport::Channel::from_shared(format!("https://{addr}"))?
        .tls_config(tls)?
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await?;
    greet(channel, "tls").await
}

#[test]
fn a_tonic_client_calls_the_greeter_over_tls_with_and_without_a_client_certificate() {
    let certs = crate::tls::certs("grpc-tls");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let ca = certs.join("ca.pem").display().to_string();
    for (auth, anonymous_served) in [(None, true), (Some("required"), false), (Some("optional"), true)] {
        let mut args = crate::tls::tls_args(&certs, &["server"]);
        args.extend(["--workers".to_owned(), "2".to_owned()]);
        if let Some(auth) = auth {
            args.extend([
                "--tls-client-ca".to_owned(),
                ca.clone(),
                "--tls-client-auth".to_owned(),
                auth.to_owned(),
            ]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let server = Server::start_command(command(example("grpc"), &args));
        let anonymous = runtime.block_on(say_hello_tls(server.addr, &certs, None));
        match anonymous_served {
            true => {
                let message = anonymous.unwrap_or_else(|err| panic!("{auth:?}: no client certificate: {err}"));
                assert!(message.starts_with("Hello tls from worker "), "{message}");
                assert!(!message.contains("verified"), "{message}");
            }
            false => assert!(anonymous.is_err(), "{auth:?}: served without a client certificate"),
        }
        if auth.is_some() {
            let message = runtime
                .block_on(say_hello_tls(server.addr, &certs, Some("client")))
                .unwrap_or_else(|err| panic!("{auth:?}: with a client certificate: {err}"));
            assert!(
                message.ends_with("(client certificate verified)"),
                "{auth:?}: {message}"
            );
        }
    }
}
