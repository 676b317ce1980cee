//! The HTTP response cache: [`ResponseCacheLayer`] builds [`ResponseCache`].

mod body;
mod key;
mod layer;
mod policy;
mod service;

pub use body::ResponseBody;
pub use key::{Credentials, QueryKey};
pub use layer::ResponseCacheLayer;
pub use service::{ResponseCache, ResponseFuture};
