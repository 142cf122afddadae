//! The client side: worker threads, our HTTP/1.1 layer, what a browser and a client may do, the request handler and its answers.

pub mod access;
pub mod browser;
pub mod connection;
pub mod error;
pub mod held;
pub mod http1;
pub mod metrics;
pub mod route;
pub mod server;
pub mod spare;
pub mod status;
pub mod stream;
pub mod workers;
