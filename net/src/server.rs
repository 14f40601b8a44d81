//! The TCP side of a shard: accept loops on the shared port (SO_REUSEPORT)
//! and on the shard's own port, one task per connection that reads frames,
//! runs requests concurrently (bounded per connection) and writes responses
//! as they complete, matched by id. Also the `/metrics` endpoint.
//!
//! Memory per connection is bounded: the read buffer holds at most one
//! frame (`frame_bytes_max`) plus one read; at most
//! `inflight_per_connection_max` requests run at once and reading pauses
//! when that many wait, so a client that never reads its responses stops
//! being read from instead of growing the server.

use crate::metrics::{render_prometheus, OpKind, ShardMetrics};
use crate::shard::Shard;
use bytes::BytesMut;
use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::channels::local_channel;
use glommio::net::{TcpListener, TcpStream};
use std::rc::Rc;
use std::time::Instant;
use tessera_protocol::frame::{next_frame, put_frame};
use tessera_protocol::message::decode_request;
use tessera_protocol::{ErrorCode, Request, Response};

const READ_CHUNK_BYTES: usize = 64 << 10;

fn op_kind(r: &Request) -> OpKind {
    match r {
        Request::Hello { .. } => OpKind::Hello,
        Request::Ping => OpKind::Ping,
        Request::Get { .. } => OpKind::Get,
        Request::Put { .. } => OpKind::Put,
        Request::Delete { .. } => OpKind::Delete,
        Request::Scan { .. } => OpKind::Scan,
        Request::Batch { .. } => OpKind::Batch,
        Request::Stats => OpKind::Stats,
        Request::Topology => OpKind::Topology,
        Request::ReadAt { .. } => OpKind::ReadAt,
        Request::Txn { .. } => OpKind::Txn,
    }
}

/// Accepts until the shard shuts down.
pub async fn accept_loop(shard: Rc<Shard>, listener: TcpListener) {
    loop {
        let stream = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                if shard.shutting_down.get() {
                    return;
                }
                tracing::warn!(shard = shard.id, error = %e, "accept failed");
                glommio::timer::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        if shard.shutting_down.get() {
            return;
        }
        let open = shard.metrics.connections_open.get();
        if open as usize >= shard.config.connections_max {
            ShardMetrics::add(&shard.metrics.connections_refused, 1);
            let refusal = Response::error(ErrorCode::Unavailable, "too many connections").encode(0);
            let mut frame = Vec::new();
            put_frame(&mut frame, &refusal);
            glommio::spawn_local(async move {
                let mut stream = stream;
                let _ = stream.write_all(&frame).await;
                let _ = stream.close().await;
            })
            .detach();
            continue;
        }
        let shard = shard.clone();
        glommio::spawn_local(async move {
            ShardMetrics::add(&shard.metrics.connections_open, 1);
            if let Err(e) = serve_connection(&shard, stream).await {
                tracing::debug!(shard = shard.id, error = %e, "connection closed");
            }
            shard
                .metrics
                .connections_open
                .set(shard.metrics.connections_open.get() - 1);
        })
        .detach();
    }
}

async fn serve_connection(shard: &Rc<Shard>, stream: TcpStream) -> std::io::Result<()> {
    let _ = stream.set_nodelay(true);
    let (mut reader, mut writer) = futures_lite::io::split(stream);
    let inflight_max = shard.config.inflight_per_connection_max;
    let (tx, rx) = local_channel::new_bounded::<(u64, Response)>(inflight_max);
    let tx = Rc::new(tx);
    let metrics_shard = shard.clone();
    let write_task = glommio::spawn_local(async move {
        let mut out = Vec::with_capacity(READ_CHUNK_BYTES);
        while let Some((id, response)) = rx.recv().await {
            out.clear();
            put_frame(&mut out, &response.encode(id));
            // Batch whatever else is ready into the same write.
            while out.len() < READ_CHUNK_BYTES {
                match futures_lite::future::poll_once(rx.recv()).await {
                    Some(Some((id, response))) => put_frame(&mut out, &response.encode(id)),
                    _ => break,
                }
            }
            ShardMetrics::add(&metrics_shard.metrics.bytes_out, out.len() as u64);
            writer.write_all(&out).await?;
        }
        writer.flush().await?;
        std::io::Result::Ok(())
    });
    let inflight = Rc::new(glommio::sync::Semaphore::new(inflight_max as u64));
    let limit = shard.config.limits.frame_bytes_max;
    let mut buf = BytesMut::with_capacity(READ_CHUNK_BYTES);
    let mut chunk = vec![0u8; READ_CHUNK_BYTES];
    let result = 'read: loop {
        let n = match reader.read(&mut chunk).await {
            Ok(0) => break Ok(()),
            Ok(n) => n,
            Err(e) => break Err(e),
        };
        ShardMetrics::add(&shard.metrics.bytes_in, n as u64);
        buf.extend_from_slice(&chunk[..n]);
        loop {
            let frame = match next_frame(&mut buf, limit) {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(too_large) => {
                    // The stream cannot be resynchronised: answer and close.
                    shard.metrics.record(OpKind::Invalid, 0, true);
                    let _ = tx
                        .send((
                            0,
                            Response::error(ErrorCode::BadFrame, too_large.to_string()),
                        ))
                        .await;
                    break 'read Ok(());
                }
            };
            let permit = match inflight.clone().acquire_static_permit(1).await {
                Ok(p) => p,
                Err(_) => break 'read Ok(()),
            };
            let (shard, tx) = (shard.clone(), tx.clone());
            glommio::spawn_local(async move {
                let start = Instant::now();
                let (id, kind, response) = match decode_request(&frame, &shard.config.limits) {
                    Ok((id, request)) => {
                        let kind = op_kind(&request);
                        (id, kind, shard.handle(request).await)
                    }
                    Err(e) => (e.id, OpKind::Invalid, Response::error(e.code, e.message)),
                };
                let error = matches!(response, Response::Error { .. });
                shard
                    .metrics
                    .record(kind, start.elapsed().as_micros() as u64, error);
                let _ = tx.send((id, response)).await;
                drop(permit);
            })
            .detach();
        }
    };
    // Let in-flight requests finish and their responses go out.
    let _ = inflight.acquire_permit(inflight_max as u64).await;
    drop(tx);
    let written = write_task.await;
    result.and(written)
}

/// Serves `GET /metrics` in Prometheus text format, gathering every shard's
/// figures over the mesh.
pub async fn metrics_loop(shard: Rc<Shard>, listener: TcpListener) {
    while let Ok(mut stream) = listener.accept().await {
        if shard.shutting_down.get() {
            return;
        }
        let shard = shard.clone();
        glommio::spawn_local(async move {
            let mut request = Vec::new();
            let mut chunk = [0u8; 1024];
            while !request.windows(4).any(|w| w == b"\r\n\r\n") && request.len() < 8192 {
                match stream.read(&mut chunk).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => request.extend_from_slice(&chunk[..n]),
                }
            }
            let (status, body) = if request.starts_with(b"GET /metrics ") {
                match shard.handle(Request::Stats).await {
                    Response::Stats(m) => ("200 OK", render_prometheus(&m)),
                    other => ("500 Internal Server Error", format!("{other:?}\n")),
                }
            } else {
                ("404 Not Found", "try GET /metrics\n".to_string())
            };
            let reply = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(reply.as_bytes()).await;
            let _ = stream.close().await;
        })
        .detach();
    }
}
