//! A bare HTTP/1.0 GET for tests that reach a server inside a sandbox or through a host port, without a client library's proxy or keep-alive behaviour.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// Sends `GET / HTTP/1.0` with header `Host: <host>` to `addr` and returns the whole
/// response (status line, headers and body) once the server closes the connection. Gives
/// up connecting after 2 s and reading after 5 s of silence; fails with the I/O error.
pub fn http_get(addr: SocketAddr, host: &str) -> std::io::Result<String> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(format!("GET / HTTP/1.0\r\nHost: {host}\r\n\r\n").as_bytes())?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    Ok(response)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn http_get_sends_the_host_header_and_returns_everything_until_close() {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = std::thread::spawn(move || {
            let (mut conn, _) = listener.accept().expect("accept");
            let mut request = [0u8; 256];
            let n = conn.read(&mut request).expect("read");
            conn.write_all(b"HTTP/1.0 200 OK\r\n\r\nhello")
                .expect("write");
            String::from_utf8_lossy(&request[..n]).into_owned()
        });
        let response = http_get(addr, "example").expect("get");
        assert_eq!(response, "HTTP/1.0 200 OK\r\n\r\nhello");
        let request = server.join().expect("server thread");
        assert!(
            request.starts_with("GET / HTTP/1.0\r\nHost: example\r\n"),
            "{request}"
        );
    }
}
