//! What every clone of a `Locker` shares: the store, the settings, the local queues and the
//! lease scheduler.

use std::sync::Arc;

use crate::config::Config;
use crate::queue::Queues;
use crate::store::Store;
use crate::upkeep::{Owned, Scheduler};

/// The shared part of a `Locker`.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) store: Store,
    pub(crate) config: Config,
    pub(crate) queues: Arc<Queues<Owned>>,
    pub(crate) scheduler: Arc<Scheduler>,
}

impl Core {
    pub(crate) fn new(store: Store, config: Config) -> Arc<Core> {
        Arc::new(Core {
            store,
            queues: Queues::new(config.handoff_limit),
            config,
            scheduler: Scheduler::new(),
        })
    }
}
