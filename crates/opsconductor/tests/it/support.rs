//! Assertions shared by the modules.

use std::time::Duration;

pub use opsconductor_testkit::{assert_code, assert_violations};

pub const MISSING_ID: &str = "01900000-0000-7000-8000-000000000000";

/// A loopback port whose accept queue is full: new connections hang in SYN retransmission,
/// which makes a connectivity test take as long as its timeout.
pub async fn black_hole() -> (u16, Vec<tokio::net::TcpStream>, tokio::net::TcpListener) {
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.bind("127.0.0.1:0".parse().unwrap()).unwrap();
    let listener = socket.listen(0).unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut held = Vec::new();
    for _ in 0..8 {
        match tokio::time::timeout(
            Duration::from_millis(300),
            tokio::net::TcpStream::connect(("127.0.0.1", port)),
        )
        .await
        {
            Ok(Ok(stream)) => held.push(stream),
            _ => return (port, held, listener),
        }
    }
    panic!("the accept queue never filled");
}

/// A target whose connectivity test hangs until its timeout (its port is a [`black_hole`]);
/// keep the returned guard alive while the test runs.
pub async fn slow_target(
    client: &mut opsconductor_api::targets::v1::targets_service_client::TargetsServiceClient<
        opsconductor_platform::auth::AuthChannel,
    >,
) -> (
    opsconductor_api::targets::v1::Target,
    (Vec<tokio::net::TcpStream>, tokio::net::TcpListener),
) {
    use opsconductor_api::targets::v1::{CreateTargetRequest, Target};
    let (hole, held, listener) = black_hole().await;
    let target = client
        .create_target(CreateTargetRequest {
            target: Some(Target {
                name: "slow".into(),
                address: "127.0.0.1".into(),
                port: u32::from(hole),
                ..Default::default()
            }),
        })
        .await
        .expect("create the slow target")
        .into_inner()
        .target
        .expect("target in response");
    (target, (held, listener))
}
