//! Plain HTTP forwarding of absolute-URI requests (`GET http://host/path`).
//!
//! The decision uses the URI's authority; the forwarded `Host` is rebuilt
//! from its canonical form; hop-by-hop and `Proxy-*` headers are dropped;
//! framing is re-serialised by hyper; redirects are relayed, never followed.
//! `Upgrade` is passed through for `websocket` only.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use http_body_util::BodyExt;
use hyper::body::{Frame, Incoming};
use hyper::header::{
    HeaderMap, HeaderName, HeaderValue, CONNECTION, CONTENT_LENGTH, HOST, TRANSFER_ENCODING,
    UPGRADE,
};
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::rt::TokioIo;

use super::connect::tunnel;
use super::event::EventGuard;
use super::{sanitize, Asking, ProxyBody, Refusal, Shared, Via};
use crate::policy::{parse_authority, Host};

/// Headers that describe one hop, never forwarded (RFC 9110 7.6.1), plus
/// the legacy `Proxy-Connection`.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

pub(super) async fn handle(shared: Arc<Shared>, mut req: Request<Incoming>) -> Response<ProxyBody> {
    let started = Instant::now();
    let method = req.method().as_str().to_owned();
    let uri = req.uri().clone();
    let bad = |reason: &str| {
        Refusal::new(
            StatusCode::BAD_REQUEST,
            format!("malformed; error={reason}"),
        )
    };
    let shown = sanitize(&uri.to_string());
    match uri.scheme_str() {
        Some("http") => {}
        Some("https") => {
            return shared.refuse(
                &method,
                &shown,
                0,
                bad("https URLs go through CONNECT (set HTTPS_PROXY)"),
            )
        }
        Some(_) => {
            return shared.refuse(&method, &shown, 0, bad("only http:// URLs are forwarded"))
        }
        None => {
            return shared.refuse(
                &method,
                &shown,
                0,
                bad("not a proxy request (absolute URI required)"),
            )
        }
    }
    let Some(authority) = uri.authority() else {
        return shared.refuse(&method, &shown, 0, bad("missing host"));
    };
    let (host, port) = match parse_authority(authority.as_str(), Some(80)) {
        Ok(hp) => hp,
        Err(e) => return shared.refuse(&method, &sanitize(authority.as_str()), 0, bad(e.code())),
    };
    let shown = host.to_string();
    if let Err(reason) = check_framing(req.headers()) {
        return shared.refuse(&method, &shown, port, bad(reason));
    }
    let websocket = match req.headers().get(UPGRADE) {
        None => false,
        Some(v) if v.as_bytes().eq_ignore_ascii_case(b"websocket") => true,
        Some(_) => {
            return shared.refuse(
                &method,
                &shown,
                port,
                bad("only websocket upgrades are allowed"),
            )
        }
    };
    let path = uri.path().to_owned();
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    // Over plain HTTP a placeholder is refused wherever it goes, so there
    // is never a secret to substitute here.
    let screened = match shared
        .screen(&shown, port, &method, pq, req.headers(), false, Via::Proxy)
        .await
    {
        Ok(s) => s,
        Err(r) => return shared.refuse(&method, &shown, port, r.path(&path)),
    };
    let asking = Asking::Ask {
        method: &method,
        path: Some(&path),
    };
    let target = match shared
        .authorize(host.clone(), port, Via::Proxy, asking)
        .await
    {
        Ok(t) => t,
        Err(r) => return shared.refuse(&method, &shown, port, r),
    };
    let guard = shared.guard(started, &method, &target, Via::Proxy);
    guard.set_path(&path);
    if let Some(rule) = screened.rule {
        guard.set_rule(rule);
    }
    if let Some(ask) = screened.ask {
        guard.set_ask(ask);
    }
    let client_upgrade = websocket.then(|| hyper::upgrade::on(&mut req));

    let (parts, body) = req.into_parts();
    let mut out = Request::new(count_body(body, guard.clone(), true));
    *out.method_mut() = parts.method;
    *out.version_mut() = Version::HTTP_11;
    *out.uri_mut() = origin_form(&uri);
    *out.headers_mut() = strip_hop_by_hop(parts.headers);
    out.headers_mut().insert(HOST, host_header(&host, port));
    if websocket {
        out.headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("upgrade"));
        out.headers_mut()
            .insert(UPGRADE, HeaderValue::from_static("websocket"));
    }

    let (mut sender, conn) = match hyper::client::conn::http1::Builder::new()
        .handshake::<_, ProxyBody>(TokioIo::new(target.stream))
        .await
    {
        Ok(pair) => pair,
        Err(e) => return upstream_failed(&shared, &guard, &method, &shown, port, &e),
    };
    tokio::spawn(conn.with_upgrades());
    let resp =
        match tokio::time::timeout(shared.limits.idle_timeout, sender.send_request(out)).await {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return upstream_failed(&shared, &guard, &method, &shown, port, &e),
            Err(_) => {
                guard.set_reason("upstream-timeout".into());
                return shared.refuse(
                    &method,
                    &shown,
                    port,
                    Refusal::new(StatusCode::GATEWAY_TIMEOUT, "upstream-timeout"),
                );
            }
        };
    guard.set_status(resp.status().as_u16());

    if resp.status() == StatusCode::SWITCHING_PROTOCOLS {
        if let Some(client_upgrade) = client_upgrade {
            return switch_protocols(&shared, resp, client_upgrade, guard);
        }
    }
    let (parts, body) = resp.into_parts();
    let mut back = Response::new(count_body(body, guard, false));
    *back.status_mut() = parts.status;
    *back.headers_mut() = strip_hop_by_hop(parts.headers);
    back
}

fn upstream_failed(
    shared: &Shared,
    guard: &EventGuard,
    method: &str,
    host: &str,
    port: u16,
    e: &hyper::Error,
) -> Response<ProxyBody> {
    let reason = format!("upstream-error; error={}", sanitize(&e.to_string()));
    guard.set_reason(reason.clone());
    guard.set_status(502);
    shared.refuse(
        method,
        host,
        port,
        Refusal::new(StatusCode::BAD_GATEWAY, reason),
    )
}

/// Answers 101 to the client and splices the two upgraded connections.
pub(super) fn switch_protocols(
    shared: &Shared,
    mut resp: Response<Incoming>,
    client_upgrade: hyper::upgrade::OnUpgrade,
    guard: Arc<EventGuard>,
) -> Response<ProxyBody> {
    let upstream_upgrade = hyper::upgrade::on(&mut resp);
    let idle = shared.limits.idle_timeout;
    let shutdown = shared.shutdown.clone();
    tokio::spawn(async move {
        if let (Ok(c), Ok(u)) = (client_upgrade.await, upstream_upgrade.await) {
            tunnel(TokioIo::new(c), TokioIo::new(u), idle, &guard, shutdown).await;
        }
    });
    let mut back = Response::new(super::empty());
    *back.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let mut headers = strip_hop_by_hop(resp.headers().clone());
    headers.insert(CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    *back.headers_mut() = headers;
    back
}

/// Refuses framing that different parsers read differently (request
/// smuggling): both `Content-Length` and `Transfer-Encoding`, several
/// `Content-Length`s, or a transfer coding other than a lone `chunked`.
pub(super) fn check_framing(h: &HeaderMap) -> Result<(), &'static str> {
    let cl = h.get_all(CONTENT_LENGTH).iter().count();
    let te: Vec<_> = h.get_all(TRANSFER_ENCODING).iter().collect();
    if cl > 1 {
        return Err("several Content-Length headers");
    }
    if cl == 1 && !te.is_empty() {
        return Err("both Content-Length and Transfer-Encoding");
    }
    if te.len() > 1
        || te
            .first()
            .is_some_and(|v| !v.as_bytes().eq_ignore_ascii_case(b"chunked"))
    {
        return Err("unsupported Transfer-Encoding");
    }
    Ok(())
}

fn origin_form(uri: &Uri) -> Uri {
    let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
    let pq = if pq.is_empty() { "/" } else { pq };
    pq.parse().unwrap_or_else(|_| Uri::from_static("/"))
}

fn host_header(host: &Host, port: u16) -> HeaderValue {
    let text = if port == 80 {
        host.to_string()
    } else {
        format!("{host}:{port}")
    };
    // A canonical host is LDH, a dotted quad, or a bracketed IPv6 literal.
    HeaderValue::from_str(&text).unwrap_or(HeaderValue::from_static("invalid"))
}

pub(super) fn strip_hop_by_hop(mut headers: HeaderMap) -> HeaderMap {
    let named: Vec<HeaderName> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|t| HeaderName::from_bytes(t.trim().as_bytes()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in HOP_BY_HOP {
        headers.remove(*name);
    }
    let proxy: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy {
        headers.remove(name);
    }
    headers
}

/// Counts body bytes into the connection's event (up or down).
pub(super) fn count_body(body: Incoming, guard: Arc<EventGuard>, up: bool) -> ProxyBody {
    body.map_frame(move |frame: Frame<Bytes>| {
        if let Some(data) = frame.data_ref() {
            if up {
                guard.add_up(data.len());
            } else {
                guard.add_down(data.len());
            }
        }
        frame
    })
    .boxed()
}
