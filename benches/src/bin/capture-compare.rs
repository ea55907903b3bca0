//! Captured connections vs the explicit proxy, from inside one sandbox, in
//! one interleaved run: connection set-up plus a 1-byte echo to an echo
//! server on the host's loopback, (a) through capture (connect to the name:
//! init's DNS, init's listener, `CONNECT` on the proxy socket) and (b)
//! through the proxy variable's path (connect to 127.0.0.1:3128, send
//! `CONNECT`, read the 200). Both end in the same proxy; the difference is
//! what capture adds. Timed inside the sandbox by one Python process, so
//! the interpreter's cost is the same on both sides.
//!
//! Usage: capture-compare [--iterations N] [--image IMG]

use std::io::{Read, Write};
use std::net::TcpListener;

use agent_sandbox::proxy::Limits;
use agent_sandbox::Sandbox;
use agent_sandbox_benches::iterations_and_image;

const PROBE: &str = r#"
import socket, sys, time
port, n = int(sys.argv[1]), int(sys.argv[2])
addr = socket.getaddrinfo("echo.test", port, socket.AF_INET)[0][4][0]
def echo(s):
    s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"x"); assert s.recv(1) == b"x"; s.close()
def captured():  # the address a client cached
    echo(socket.create_connection((addr, port)))
def captured_lookup():  # a client that looks the name up every time (init's DNS)
    echo(socket.create_connection(("echo.test", port)))
def explicit():
    s = socket.create_connection(("127.0.0.1", 3128)); s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    s.sendall(b"CONNECT echo.test:%d HTTP/1.1\r\nhost: echo.test:%d\r\n\r\n" % (port, port))
    head = b""
    while b"\r\n\r\n" not in head: head += s.recv(4096)
    assert head.startswith(b"HTTP/1.1 200")
    echo(s)
paths = [("explicit", explicit), ("captured", captured), ("captured+lookup", captured_lookup)]
times = {name: [] for name, _ in paths}
for i in range(n + 20):
    for name, f in paths[i % 3:] + paths[:i % 3]:  # rotate the order
        t = time.perf_counter(); f(); dt = time.perf_counter() - t
        if i >= 20: times[name].append(dt)
for name, t in times.items():
    t.sort()
    print(name, len(t), *(f"{t[int(q * (len(t) - 1))] * 1e6:.0f}" for q in (0.5, 0.9, 0.99)))
"#;

fn main() {
    let (n, image) = iterations_and_image(1000);
    let echo = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = echo.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for conn in echo.incoming().flatten() {
            std::thread::spawn(move || {
                let mut c = conn;
                let _ = c.set_nodelay(true);
                let mut buf = [0u8; 4096];
                while let Ok(k) = c.read(&mut buf) {
                    if k == 0 || c.write_all(&buf[..k]).is_err() {
                        break;
                    }
                }
            });
        }
    });
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let out = rt.block_on(async {
        Sandbox::builder()
            .image(image)
            .allow(format!("echo.test:{port}"))
            .resolve("echo.test", port, "127.0.0.1")
            // Two connections per iteration, well past the default rate
            // limit, which would measure the limiter instead.
            .proxy_limits({
                let mut l = Limits::default();
                l.new_connections_per_second = 1_000_000;
                l
            })
            .timeout(std::time::Duration::from_secs(600))
            .run(["python3", "-c", PROBE, &port.to_string(), &n.to_string()])
            .await
            .expect("run the probe")
    });
    assert!(out.success(), "{}", out.stderr_str());
    println!(
        "Captured vs explicit proxy, set-up + 1-byte echo, {n} interleaved iterations each (µs):\n"
    );
    println!("| path | n | p50 | p90 | p99 |\n|---|---|---|---|---|");
    let mut p50 = std::collections::HashMap::new();
    for line in out.stdout_str().lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if let [name, n, a, b, c] = f[..] {
            let what = match name {
                "explicit" => "explicit proxy (CONNECT to 127.0.0.1:3128 by the client)",
                "captured" => "captured (address looked up once, as clients cache it)",
                _ => "captured, name looked up through init's DNS every time",
            };
            println!("| {what} | {n} | {a} | {b} | {c} |");
            p50.insert(name.to_owned(), a.parse::<f64>().unwrap_or(0.0));
        }
    }
    let explicit = p50.get("explicit").copied().unwrap_or(f64::NAN);
    for name in ["captured", "captured+lookup"] {
        let p = p50.get(name).copied().unwrap_or(f64::NAN);
        println!(
            "\n{name}: {:+.1}% vs explicit at the median (target: at most +10%)",
            (p / explicit - 1.0) * 100.0
        );
    }
}
