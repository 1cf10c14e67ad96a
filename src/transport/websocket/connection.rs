//! One WebSocket connection after its handshake: the loop that waits on its
//! subscription, its socket's read side, pings, expiry and shutdown; client frames
//! (subscribe, unsubscribe, publish); and delivery, straight to the socket where it can,
//! through tungstenite where it must, with the hub's express lane armed while it waits.

use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{self, Message as Frame};
use tokio_util::sync::CancellationToken;

use crate::app::App;
use crate::auth::Identity;
use crate::bus::control::Control;
use crate::bus::{Event, Express, ExpressSwitch, Subscription};
use crate::config::Transport;
use crate::conn::ConnInfo;
use crate::error::{Error, Result};
use crate::metrics::TransportMetrics;
use crate::protocol::Message;
use crate::transport::session::Issued;
use crate::transport::{Session, presence};
use crate::wake::SideWaits;

use super::close::{
    CLOSE_BACKEND_REFUSED, CLOSE_BACKEND_UNAVAILABLE, CLOSE_DISCONNECTED, CLOSE_TIMEOUT,
    CLOSE_TOKEN_EXPIRED, CLOSE_TOKEN_INVALID, close_code, read_error_close,
};
use super::wire::{self, WsFrame as _};

mod frames;
mod server;

use server::control_frame;

/// Most queued events written in one batch before flushing.
const MAX_BATCH: usize = 256;

/// Most pings answered while the socket takes nothing: a client that pings without
/// reading its socket is a slow consumer of its own pongs. tungstenite keeps only the
/// latest unsent pong once its write buffer is full, so this bounds time, not memory.
const MAX_PONGS_OWED: u32 = 32;

/// What woke the connection loop.
enum Step {
    Shutdown,
    Expired,
    Ping,
    Event(std::result::Result<Event, crate::bus::Closed>),
    Frame(Option<std::result::Result<Frame, tungstenite::Error>>),
    /// A call to the backend came back with this frame to send.
    Rpc(String),
}

/// What came of writing a message straight to the socket.
enum Direct {
    /// The socket took the whole frame.
    Written,
    /// It took this many bytes of it.
    Part(usize),
    /// More was queued: this event comes next, and tungstenite batches them.
    Backlog(Event),
    /// Not written (nor counted): tungstenite holds unwritten bytes, or the socket is full.
    Refused,
    /// The socket failed.
    Failed,
}

/// Why the connection loop stopped, and what to tell the peer.
struct Stop {
    reason: &'static str,
    close: Option<(u16, String)>,
}

pub(super) struct Connection<S> {
    app: Arc<App>,
    ws: WebSocketStream<S>,
    who: Identity,
    /// Holds the connection's slot under the limits and its publish budget.
    conn: Option<ConnInfo>,
    subscription: Subscription,
    session: Session,
    last_heard: Instant,
    /// tungstenite holds nothing unwritten: deliveries may go straight to the socket.
    direct: bool,
    /// The hub's express lane to this socket, if it has one.
    express: Option<ExpressSwitch>,
    /// Pings in a row whose pong the socket did not take at once.
    pongs_owed: u32,
    /// Its calls to the backend, once it made one.
    rpcs: Option<Box<frames::Rpcs>>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send> Connection<S> {
    pub(super) fn new(
        app: Arc<App>,
        ws: WebSocketStream<S>,
        conn: Option<ConnInfo>,
        who: Option<Identity>,
        express: Option<Arc<dyn Express>>,
    ) -> Self {
        // The connection's own token: after the upgrade nothing else watches it, and a
        // second token would cost every socket another allocation.
        let cut = conn
            .as_ref()
            .map_or_else(CancellationToken::new, |c| c.kill().clone());
        let mut subscription = app.bus.subscribe_with_cut(cut.clone());
        let member = who
            .as_ref()
            .and_then(|who| presence::member(&app, who, Transport::Websocket));
        subscription.set_client(member, true);
        let express = express.map(|sink| subscription.set_express(sink));
        let metrics = app.metrics.transport(Transport::Websocket);
        let mut session = Session::open(
            Transport::Websocket,
            metrics,
            conn.as_ref().map(|c| c.remote()),
            cut,
        );
        if let Some(who) = &who {
            session.tell_backend(&app, who);
        }
        Connection {
            app,
            ws,
            who: who.unwrap_or_else(Identity::anonymous),
            conn,
            subscription,
            session,
            last_heard: Instant::now(),
            direct: true,
            express,
            pongs_owed: 0,
            rpcs: None,
        }
    }

    fn metrics(&self) -> &TransportMetrics {
        self.app.metrics.transport(Transport::Websocket)
    }

    /// Closes at once for credentials that did not verify.
    pub(super) async fn refuse(&mut self, err: &Error) {
        self.app.metrics.error(err.label());
        let code = match err {
            Error::TokenExpired => CLOSE_TOKEN_EXPIRED,
            Error::Backend(_) => CLOSE_BACKEND_REFUSED,
            Error::BackendUnavailable(_) => CLOSE_BACKEND_UNAVAILABLE,
            Error::Disconnected => CLOSE_DISCONNECTED,
            _ => CLOSE_TOKEN_INVALID,
        };
        self.session.ending(err.label());
        let frame = CloseFrame {
            code: CloseCode::from(code),
            reason: err.code().to_owned().into(),
        };
        let _ = tokio::time::timeout(CLOSE_TIMEOUT, self.ws.close(Some(frame))).await;
    }

    /// Serves the connection until it ends; `issued` is the client session its handshake
    /// began, which the client is told of first.
    pub(super) async fn run(&mut self, issued: Option<Box<Issued>>) {
        // Boxed: it runs once, and the task should not keep room for it.
        if let Some(issued) = issued
            && Box::pin(self.greet(issued)).await.is_err()
        {
            return;
        }
        let ping_every = Duration::from_millis(self.app.config.websocket.ping_interval_ms);
        let mut ping =
            tokio::time::interval_at(tokio::time::Instant::now() + ping_every, ping_every);
        let app = self.app.clone();
        // Boxed, and only for credentials that expire: a timer inline (and the identity
        // copy it would borrow) would cost every idle socket's task its room.
        let mut expiry = self
            .who
            .expires_in()
            .map(|left| Box::pin(tokio::time::sleep(left)));
        // Created once, not per turn of the loop: each creation registers a waiter.
        let shutdown = app.shutdown.cancelled();
        tokio::pin!(shutdown);
        // Everything but the subscription (shutdown, expiry, the ping timer and the
        // socket's read side) is polled only after it woke the task: see `crate::wake`.
        let side = SideWaits::default();
        let stop = loop {
            // Reading may leave tungstenite an answer (a pong, a close) part-written.
            let mut read = false;
            // While armed, the hub writes live messages to the socket itself and this task
            // stays parked; it must write nothing before it disarms.
            let armed = self.direct && self.express.is_some() && self.subscription.arm();
            let express = self.express.as_ref().filter(|_| armed);
            let step = {
                let ws = &mut self.ws;
                let rpcs = &mut self.rpcs;
                // Kept across wake-ups until this turn ends: a history read it starts
                // (filling a hole) may take several polls to complete.
                let mut next = std::pin::pin!(self.subscription.next());
                std::future::poll_fn(|cx| {
                    if let Some(waker) = side.fired(cx.waker()) {
                        // Every side step may write (reading answers a ping): the hub's
                        // writes stop first, and a message it part-wrote is finished
                        // before anything else.
                        if express.is_some_and(ExpressSwitch::disarm) {
                            side.again();
                            return next.as_mut().poll(cx).map(Step::Event);
                        }
                        let mut side_cx = Context::from_waker(&waker);
                        if shutdown.as_mut().poll(&mut side_cx).is_ready() {
                            return Poll::Ready(Step::Shutdown);
                        }
                        if expiry
                            .as_mut()
                            .is_some_and(|expiry| expiry.as_mut().poll(&mut side_cx).is_ready())
                        {
                            return Poll::Ready(Step::Expired);
                        }
                        // After these, the rest has not been polled yet: look again next
                        // turn.
                        if ping.poll_tick(&mut side_cx).is_ready() {
                            side.again();
                            return Poll::Ready(Step::Ping);
                        }
                        if let Some(rpcs) = rpcs.as_mut()
                            && let Poll::Ready(Some(answer)) = rpcs.answers.poll_recv(&mut side_cx)
                        {
                            rpcs.in_flight -= 1;
                            side.again();
                            return Poll::Ready(Step::Rpc(answer));
                        }
                        read = true;
                        if let Poll::Ready(frame) = ws.poll_next_unpin(&mut side_cx) {
                            // More frames may already be buffered.
                            side.again();
                            return Poll::Ready(Step::Frame(frame));
                        }
                    }
                    next.as_mut().poll(cx).map(Step::Event)
                })
                .await
            };
            if let Some(express) = express {
                express.disarm();
            }
            self.direct &= !read;
            let outcome = match step {
                Step::Shutdown => Err(Stop {
                    reason: "shutdown",
                    close: Some((1012, format!("retry_ms={}", app.reconnect_delay_ms()))),
                }),
                Step::Expired => {
                    app.metrics.error("token_expired");
                    Err(Stop {
                        reason: "token_expired",
                        close: Some((CLOSE_TOKEN_EXPIRED, "token_expired".to_owned())),
                    })
                }
                // Delivering and pinging are boxed like frame handling: an idle socket
                // waits in the poll above, and its task need not keep room for the writes.
                Step::Ping => Box::pin(self.ping(ping_every)).await,
                Step::Event(Ok(event)) => {
                    let direct = match &event {
                        Event::Message(message) => self.try_direct(message),
                        Event::Gap(_) | Event::Control(_) => Direct::Refused,
                    };
                    match direct {
                        Direct::Written => Ok(()),
                        direct => Box::pin(self.deliver(event, direct)).await,
                    }
                }
                Step::Event(Err(closed)) => Err(Stop {
                    reason: closed.code(),
                    close: Some((close_code(closed), closed.code().to_owned())),
                }),
                // Boxed: handling a client frame (a subscribe reads history) is the largest
                // state in this loop, and idle connections should not carry it inline.
                Step::Frame(frame) => Box::pin(self.on_frame(frame)).await,
                Step::Rpc(answer) => Box::pin(self.send_text(answer)).await,
            };
            if let Err(stop) = outcome {
                break stop;
            }
        };
        self.session.ending(stop.reason);
        if let Some((code, reason)) = stop.close {
            let frame = CloseFrame {
                code: CloseCode::from(code),
                reason: reason.into(),
            };
            // Boxed: the loop's locals are still in scope here, and the close's timer
            // would otherwise add its room to every task.
            let close = tokio::time::timeout(CLOSE_TIMEOUT, self.ws.close(Some(frame)));
            let _ = Box::pin(close).await;
        }
    }

    async fn on_frame(
        &mut self,
        frame: Option<Result<Frame, tungstenite::Error>>,
    ) -> Result<(), Stop> {
        self.last_heard = Instant::now();
        match frame {
            None => Err(Stop {
                reason: "client_closed",
                close: None,
            }),
            Some(Ok(Frame::Text(text))) => self.on_text(&text).await,
            Some(Ok(Frame::Binary(_))) => {
                let err = Error::BadFrame("binary frames are not supported; send JSON text".into());
                self.send_error(None, &err).await
            }
            // tungstenite answers pings itself and replies to a close on the next flush.
            Some(Ok(Frame::Close(_))) => {
                let _ = self.ws.flush().await;
                Err(Stop {
                    reason: "client_closed",
                    close: None,
                })
            }
            Some(Ok(Frame::Ping(_))) => self.owe_pong(),
            Some(Ok(_)) => Ok(()),
            Some(Err(err)) => Err(protocol_stop(&err, &self.app)),
        }
    }

    /// tungstenite has queued the pong of a ping just read: cuts the client off as a slow
    /// consumer once too many pongs in a row find its socket full.
    fn owe_pong(&mut self) -> Result<(), Stop> {
        // The socket's readiness is watched by the read side already: no waker is needed.
        let mut cx = Context::from_waker(Waker::noop());
        match self.ws.poll_flush_unpin(&mut cx) {
            Poll::Ready(Ok(())) => {
                self.pongs_owed = 0;
                self.direct = true;
                Ok(())
            }
            Poll::Ready(Err(_)) => Err(Stop {
                reason: "write_failed",
                close: None,
            }),
            Poll::Pending => {
                self.pongs_owed += 1;
                if self.pongs_owed <= MAX_PONGS_OWED {
                    return Ok(());
                }
                // Nothing can be written to it: no close frame either.
                self.session.cut_off();
                Err(Stop {
                    reason: "slow_consumer",
                    close: None,
                })
            }
        }
    }

    /// Writes a lone message straight to the socket, as the one buffer its message holds
    /// for every subscriber: through tungstenite it would first be copied into this
    /// connection's buffer. Only while tungstenite holds nothing unwritten, so that frames
    /// never interleave. Not async, so that the usual case (the socket takes the frame)
    /// needs no boxed future; anything else is left to [`Connection::deliver`].
    fn try_direct(&mut self, message: &Message) -> Direct {
        let sent = self.subscription.take_written();
        if sent > 0 {
            // The hub wrote this much of it express before the socket filled.
            self.record(message, crate::bus::now_ms());
            return Direct::Part(sent);
        }
        if !self.direct {
            return Direct::Refused;
        }
        // A backlog goes through tungstenite, which batches it.
        if let Some(Ok(next)) = self.subscription.try_next() {
            return Direct::Backlog(next);
        }
        let wire = message.ws_wire();
        // A socket that is not writable is left to tungstenite, which registers the
        // task's waker; this attempt needs none.
        let mut cx = Context::from_waker(Waker::noop());
        let direct = match Pin::new(self.ws.get_mut()).poll_write(&mut cx, wire) {
            Poll::Ready(Ok(sent)) if sent == wire.len() => Direct::Written,
            Poll::Ready(Ok(sent)) => Direct::Part(sent),
            // Counted where it is written.
            Poll::Pending => return Direct::Refused,
            Poll::Ready(Err(_)) => Direct::Failed,
        };
        self.record(message, crate::bus::now_ms());
        direct
    }

    /// Finishes a delivery that [`Connection::try_direct`] did not complete, or delivers
    /// any other event, with whatever else is already queued.
    async fn deliver(&mut self, event: Event, direct: Direct) -> Result<(), Stop> {
        let Event::Message(message) = event else {
            return self.deliver_framed(Some(event), None).await;
        };
        let frame = || message.ws_message();
        match direct {
            Direct::Written => Ok(()),
            // The socket took part of the frame: the rest must follow before anything
            // else is written.
            Direct::Part(sent) => {
                let socket = self.ws.get_mut();
                let write = async { Ok(socket.write_all(&message.ws_wire()[sent..]).await?) };
                guarded(write, &self.subscription, &self.app).await
            }
            Direct::Backlog(next) => {
                self.record(&message, crate::bus::now_ms());
                self.deliver_framed(Some(next), Some(frame())).await
            }
            Direct::Refused => {
                self.record(&message, crate::bus::now_ms());
                self.deliver_framed(None, Some(frame())).await
            }
            Direct::Failed => Err(Stop {
                reason: "write_failed",
                close: None,
            }),
        }
    }

    /// Counts a delivery made at `now` (unix milliseconds).
    fn record(&self, message: &Message, now: u64) {
        self.metrics()
            .record_delivery(message.ws_frame().len(), message.ts, now);
    }

    /// Writes `frame`, then `event` and whatever else is already queued, through
    /// tungstenite, and flushes once.
    async fn deliver_framed(
        &mut self,
        event: Option<Event>,
        frame: Option<Frame>,
    ) -> Result<(), Stop> {
        if let Some(frame) = frame {
            self.write(frame, false).await?;
        }
        let now = crate::bus::now_ms();
        let mut next = event;
        let mut written = 0;
        while let Some(event) = next.take() {
            let frame = match &event {
                Event::Message(message) => {
                    self.record(message, now);
                    message.ws_message()
                }
                Event::Gap(gap) => {
                    self.metrics().gaps.inc();
                    let json = gap.to_json();
                    Frame::text(format!(r#"{{"op":"gap",{}"#, &json[1..]))
                }
                Event::Control(Control::Disconnected) => {
                    self.app.metrics.error("disconnected");
                    return Err(Stop {
                        reason: "disconnected",
                        close: Some((CLOSE_DISCONNECTED, "disconnected".to_owned())),
                    });
                }
                Event::Control(control) => Frame::text(control_frame(control)),
            };
            self.write(frame, false).await?;
            written += 1;
            if written < MAX_BATCH {
                next = match self.subscription.try_next() {
                    Some(Ok(event)) => Some(event),
                    _ => None,
                };
            }
        }
        self.write_flush().await
    }

    async fn ping(&mut self, every: Duration) -> Result<(), Stop> {
        if self.last_heard.elapsed() > every * 2 {
            return Err(Stop {
                reason: "ping_timeout",
                close: None,
            });
        }
        self.write(Frame::Ping(Default::default()), true).await
    }

    /// Writes a reply straight to the socket, once tungstenite holds nothing unwritten:
    /// through tungstenite, its write buffer would keep the reply's size for the rest of
    /// the connection's life (the first `session` frame alone cost every hooked
    /// connection about 250 bytes).
    async fn send_text(&mut self, text: String) -> Result<(), Stop> {
        if !self.direct {
            self.write_flush().await?;
        }
        let wire = wire::text_frame(&text);
        let tried = {
            let mut cx = Context::from_waker(Waker::noop());
            Pin::new(self.ws.get_mut()).poll_write(&mut cx, &wire)
        };
        let sent = match tried {
            Poll::Ready(Ok(sent)) => sent,
            Poll::Pending => 0,
            Poll::Ready(Err(_)) => {
                return Err(Stop {
                    reason: "write_failed",
                    close: None,
                });
            }
        };
        if sent == wire.len() {
            return Ok(());
        }
        let socket = self.ws.get_mut();
        let write = async {
            socket.write_all(&wire[sent..]).await?;
            Ok(socket.flush().await?)
        };
        guarded(write, &self.subscription, &self.app).await
    }

    async fn send_error(&mut self, id: Option<u64>, err: &Error) -> Result<(), Stop> {
        self.app.metrics.error_answer(err);
        self.send_text(frames::error_frame(id, err)).await
    }

    /// Writes one frame (flushing it out when `flush`), within the write guard.
    async fn write(&mut self, frame: Frame, flush: bool) -> Result<(), Stop> {
        if !flush {
            self.direct = false;
            return guarded(self.ws.feed(frame), &self.subscription, &self.app).await;
        }
        guarded(self.ws.send(frame), &self.subscription, &self.app).await?;
        self.direct = true;
        Ok(())
    }

    async fn write_flush(&mut self) -> Result<(), Stop> {
        guarded(self.ws.flush(), &self.subscription, &self.app).await?;
        self.direct = true;
        Ok(())
    }
}

/// Runs a socket write, giving up when the client stalls past the write timeout or the
/// bus cuts it off meanwhile. Nearly every write completes on its first poll, so the
/// timer and the cut-off waiter are set up only for one that has to wait.
async fn guarded(
    write: impl Future<Output = Result<(), tungstenite::Error>>,
    subscription: &Subscription,
    app: &App,
) -> Result<(), Stop> {
    let mut write = std::pin::pin!(write);
    let first = std::future::poll_fn(|cx| Poll::Ready(write.as_mut().poll(cx))).await;
    let outcome = match first {
        Poll::Ready(result) => Ok(result),
        // Boxed: the timer and the waiter are large, and every connection's task would
        // otherwise keep room for them just in case.
        Poll::Pending => {
            let stalled = Box::pin(async {
                let timeout = Duration::from_millis(app.config.limits.write_timeout_ms);
                tokio::select! {
                    result = tokio::time::timeout(timeout, write) => Ok(result),
                    closed = subscription.cut_off() => Err(Stop { reason: closed.code(), close: None }),
                }
            });
            stalled.await?
        }
    };
    match outcome {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => Err(Stop {
            reason: "write_failed",
            close: None,
        }),
        Err(_) => Err(Stop {
            reason: "write_timeout",
            close: None,
        }),
    }
}

/// Maps a read error to the close the peer deserves.
fn protocol_stop(err: &tungstenite::Error, app: &App) -> Stop {
    let Some((code, reason)) = read_error_close(err) else {
        return Stop {
            reason: "read_failed",
            close: None,
        };
    };
    app.metrics.error(reason);
    Stop {
        reason,
        close: Some((code, reason.to_owned())),
    }
}
