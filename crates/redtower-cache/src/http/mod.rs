//! The HTTP response cache: [`ResponseCacheLayer`] builds [`ResponseCache`].

mod admit;
mod body;
mod future;
mod key;
mod layer;
mod miss;
mod policy;
mod response;
mod service;

pub use body::ResponseBody;
pub use future::ResponseFuture;
pub use key::{Credentials, QueryKey};
pub use layer::ResponseCacheLayer;
pub use service::ResponseCache;
