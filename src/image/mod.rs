//! Images: references, the registry client, layer unpacking, the content-addressed store and
//! pulls.
//!
//! Owns everything under `[state] root/images`. Must not know about containers beyond the
//! "in use" question `RemoveImage` asks.

pub mod reference;
pub mod registry;
pub mod unpack;
