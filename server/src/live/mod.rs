//! The live picture: subscriptions over WebSocket (`/ws`) and Server-Sent
//! Events (`/events`), fed by the fan-out hub.
//!
//! * [`hub`]: one thread that, every tick, reads the store's change log,
//!   coalesces it per feature, encodes each changed feature once and routes
//!   it through an R-tree of subscription viewports to the connections that
//!   may see it.
//! * [`session`]: one connection's subscriptions (each a `layers::view::View`),
//!   turning client messages and ticks into outgoing messages.
//! * [`protocol`]: the JSON wire format (`docs/protocol.md`).
//! * [`replay`]: replays of the recorded picture for after-action review.
//! * [`ws`] and [`sse`]: the two transports, with limits, heartbeats and
//!   backpressure; [`queued`] the WebSocket's write queue, [`gate`] what
//!   keeps a connection from polling its socket and timers on every tick.

pub mod batch;
pub mod gate;
pub mod hub;
pub mod protocol;
pub mod queued;
pub mod replay;
pub mod session;
pub mod sse;
pub mod ws;

pub use hub::{FanoutMode, Hub, LiveConfig, MAX_PHASES};
