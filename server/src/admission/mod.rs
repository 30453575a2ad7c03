//! Admission and overload, in one place: whether the server takes a
//! connection or a call, and what it answers when it does not.
//!
//! - [`connections`]: open connections, TLS handshakes in progress (in all
//!   and per address), open connections per certificate identity.
//! - [`calls`]: calls in flight across the server and per tenant (with a
//!   reservation per tenant), token-less streams per connection and per
//!   tenant, the request message's deadline, a per-caller rate limit,
//!   oversized request messages.
//! - [`refusals`]: the refusal budget's buckets, per connection and per
//!   certificate identity.
//! - [`shares`]: what each key (address, identity) holds now.
//!
//! Every bound's default and reason is in [`crate::limits`]. This module
//! names no type of the modules that use it (TLS, auth, the server): they
//! pass the keys (an identity's text, who a call is charged to).

pub mod calls;
pub mod connections;
pub mod refusals;
pub mod shares;

pub use calls::{
    CallBounds, Charged, ConnectionShare, InFlightLimitLayer, OwnerShareLayer, RateLimitLayer,
    Tenants, oversize_layer,
};
pub use connections::{Admission, AdmissionRefusals, HandshakeSlot, IdentitySlot, Refusal};
pub use refusals::{Buckets, ConnectionRefusals, RefusalBudget};
