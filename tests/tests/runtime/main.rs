//! The runtime against real redis-server processes, grouped by concern. Every test starts its
//! own server (`lockattr_tests::RedisServer`); fault tests put the in-test proxy
//! (`lockattr_tests::proxy::Proxy`) between a `Locker` and Redis.

mod support;

mod cancellation;
mod exclusion;
mod faults;
mod fencing;
mod foreign;
mod grants;
mod handoff;
mod inspect;
mod layout;
mod leases;
mod loss;
mod spans;
mod waiting;
