//! `CONNECT` tunnels, and the byte pump shared with WebSocket upgrades.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use hyper::body::Incoming;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};
use tokio::sync::watch;

use super::event::EventGuard;
use super::{empty, sanitize, Asking, ProxyBody, Refusal, Shared, Via};
use crate::policy::parse_authority;

const METHOD: &str = "CONNECT";
/// Large enough that bulk transfers are not syscall-bound.
const BUF: usize = 64 * 1024;

pub(super) async fn handle(shared: Arc<Shared>, mut req: Request<Incoming>) -> Response<ProxyBody> {
    let started = Instant::now();
    let via = match req.headers().get(agent_sandbox_wire::VIA_HEADER) {
        Some(v) if v.as_bytes() == b"capture" => Via::Capture,
        _ => Via::Proxy,
    };
    let uri = req.uri();
    let raw = match (uri.scheme(), uri.authority(), uri.path()) {
        (None, Some(a), "" | "/") => a.as_str().to_owned(),
        _ => {
            let shown = sanitize(&uri.to_string());
            return shared.refuse(
                METHOD,
                &shown,
                0,
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    "malformed; error=CONNECT needs host:port",
                )
                .via(via),
            );
        }
    };
    let (host, port) = match parse_authority(&raw, None) {
        Ok(hp) => hp,
        Err(e) => {
            return shared.refuse(
                METHOD,
                &sanitize(&raw),
                0,
                Refusal::new(
                    StatusCode::BAD_REQUEST,
                    format!("malformed; error={}", e.code()),
                )
                .via(via),
            );
        }
    };
    let shown = host.to_string();
    if shared.intercept.is_none() && shared.policy_now().narrows(&shown, port) {
        // HTTP rules name this host, but nothing can see inside its TLS:
        // a tunnel would allow every request.
        return shared.refuse(
            METHOD,
            &shown,
            port,
            Refusal::new(
                StatusCode::FORBIDDEN,
                "http-rules-need-interception; error=the proxy has no interceptor",
            )
            .via(via),
        );
    }
    if let Some(icp) = shared.interceptor_for(&host, port) {
        // Checked now, dialled when an allowed request needs the upstream:
        // a refused request reaches nothing.
        let asking = Asking::Ask {
            method: METHOD,
            path: None,
        };
        let checked = match shared.check(host, port, via, asking).await {
            Ok(c) => c,
            Err(r) => return shared.refuse(METHOD, &shown, port, r),
        };
        let guard = shared.guard_for(started, METHOD, &checked.host, port, &checked.rule, via);
        if let Some(ask) = checked.ask {
            guard.set_ask(ask);
        }
        guard.set_status(200);
        let on_upgrade = hyper::upgrade::on(&mut req);
        let live = shared.live.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            match on_upgrade.await {
                Ok(upgraded) => {
                    let io = TokioIo::new(upgraded);
                    super::intercept::serve(shared, icp, io, checked, via, guard.clone()).await;
                }
                Err(e) => guard.set_reason(format!(
                    "upgrade-failed; error={}",
                    sanitize(&e.to_string())
                )),
            }
            drop(guard);
            drop(live);
        });
        return Response::new(empty());
    }
    let asking = Asking::Ask {
        method: METHOD,
        path: None,
    };
    let target = match shared.authorize(host, port, via, asking).await {
        Ok(t) => t,
        Err(r) => return shared.refuse(METHOD, &shown, port, r),
    };
    let guard = shared.guard(started, METHOD, &target, via);
    guard.set_status(200);
    let on_upgrade = hyper::upgrade::on(&mut req);
    let idle = shared.limits.idle_timeout;
    let shutdown = shared.shutdown.clone();
    let live = shared.live.clone();
    tokio::spawn(async move {
        match on_upgrade.await {
            // Bytes the client pipelined behind the CONNECT head are still in
            // the upgraded stream's buffer; reading it yields them first.
            Ok(upgraded) => {
                let (ur, uw) = target.stream.into_split();
                // The common case: take the socket back from hyper, so the
                // pump reads and writes it directly (no dynamic dispatch, no
                // lock between the halves).
                match upgraded.downcast::<TokioIo<TcpStream>>() {
                    Ok(parts) => {
                        let (cr, cw) = parts.io.into_inner().into_split();
                        let cr = std::io::Cursor::new(parts.read_buf).chain(cr);
                        pump_both(cr, cw, ur, uw, idle, &guard, shutdown).await;
                    }
                    Err(upgraded) => match upgraded.downcast::<TokioIo<UnixStream>>() {
                        Ok(parts) => {
                            let (cr, cw) = parts.io.into_inner().into_split();
                            let cr = std::io::Cursor::new(parts.read_buf).chain(cr);
                            pump_both(cr, cw, ur, uw, idle, &guard, shutdown).await;
                        }
                        Err(upgraded) => {
                            let (cr, cw) = tokio::io::split(TokioIo::new(upgraded));
                            pump_both(cr, cw, ur, uw, idle, &guard, shutdown).await;
                        }
                    },
                }
            }
            Err(e) => guard.set_reason(format!(
                "upgrade-failed; error={}",
                sanitize(&e.to_string())
            )),
        }
        // The event goes out when the guard drops; only then may the
        // proxy's shutdown consider this tunnel done.
        drop(guard);
        drop(live);
    });
    Response::new(empty())
}

/// Copies both ways until both sides have closed, propagating half-close
/// (EOF on one side becomes a write shutdown on the other). Ends early after
/// `idle` with no bytes either way, or on proxy shutdown.
pub(super) async fn tunnel<C, U>(
    client: C,
    upstream: U,
    idle: Duration,
    guard: &EventGuard,
    shutdown: watch::Receiver<bool>,
) where
    C: AsyncRead + AsyncWrite + Send,
    U: AsyncRead + AsyncWrite + Send,
{
    let (cr, cw) = tokio::io::split(client);
    let (ur, uw) = tokio::io::split(upstream);
    pump_both(cr, cw, ur, uw, idle, guard, shutdown).await;
}

/// [`tunnel`] over already split halves.
async fn pump_both(
    cr: impl AsyncRead + Unpin + Send,
    cw: impl AsyncWrite + Unpin + Send,
    ur: impl AsyncRead + Unpin + Send,
    uw: impl AsyncWrite + Unpin + Send,
    idle: Duration,
    guard: &EventGuard,
    mut shutdown: watch::Receiver<bool>,
) {
    let epoch = Instant::now();
    let last = AtomicU64::new(0);
    let touch = || last.store(super::event::millis(epoch.elapsed()), Ordering::Relaxed);
    let up = pump(cr, uw, |n| {
        guard.add_up(n);
        touch();
    });
    let down = pump(ur, cw, |n| {
        guard.add_down(n);
        touch();
    });
    let watchdog = async {
        loop {
            let since = epoch
                .elapsed()
                .saturating_sub(Duration::from_millis(last.load(Ordering::Relaxed)));
            if since >= idle {
                return;
            }
            tokio::time::sleep(idle - since).await;
        }
    };
    tokio::select! {
        _ = async { tokio::join!(up, down) } => {}
        () = watchdog => guard.set_reason("idle-timeout".into()),
        _ = shutdown.changed() => guard.set_reason("proxy-shutdown".into()),
    }
}

async fn pump<R, W>(mut r: R, mut w: W, on_bytes: impl Fn(usize))
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let mut buf = vec![0u8; BUF];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
        on_bytes(n);
    }
    let _ = w.shutdown().await;
}
