//! The request layers, one module each, that the stack recipes order. A
//! layer is a pair of plain functions, one on the way in and one on the
//! way out (or a type whose drop is the way out), not a tower service:
//! the stack runs them in order around a single await of the proxy, so a
//! request's future holds one level instead of one per layer.

pub mod admission;
pub mod body_limit;
pub mod observe;
pub mod redirect;
pub mod request_id;
