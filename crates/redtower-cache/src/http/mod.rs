//! The HTTP rules of the response cache: what identifies a response ([`key`]), RFC 9111
//! directives ([`policy`]), a route's settings ([`settings`]), and the [`Responder`] that
//! answers each request of a route with them.

mod key;
mod policy;
mod responder;
mod settings;
mod tags;

pub(crate) use key::normalize_host;
pub use key::{Credentials, QueryKey};
pub(crate) use responder::Responder;
pub(crate) use settings::{Hosts, RouteSettings, tag_memo, vary_memo};
