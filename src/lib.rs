//! placeholder
pub use valkeylock_actors::*;
