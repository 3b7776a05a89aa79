//! `xmpp-cm-bench relay`: a bare byte relay (tokio `copy_bidirectional`), the physical cost of
//! adding one TCP hop, to compare proxies against.

use std::net::SocketAddr;

pub async fn serve(listener: tokio::net::TcpListener, to: SocketAddr) -> std::io::Result<()> {
    loop {
        let (mut client, _) = match listener.accept().await {
            Ok(x) => x,
            Err(_) => {
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        tokio::spawn(async move {
            let _ = client.set_nodelay(true);
            let Ok(mut up) = tokio::net::TcpStream::connect(to).await else { return };
            let _ = up.set_nodelay(true);
            let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
        });
    }
}
