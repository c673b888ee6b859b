//! What every clone of a `Locker` shares: the store, the settings, the local queues and the
//! lease scheduler.

use std::sync::Arc;

use crate::config::Config;
use crate::queue::Queues;
use crate::store::Store;
use crate::upkeep::{Owned, SchedulerTask, Timers};

/// The shared part of a `Locker`.
#[derive(Debug)]
pub(crate) struct Core {
    pub(crate) store: Store,
    pub(crate) config: Config,
    pub(crate) queues: Arc<Queues<Owned>>,
    pub(crate) timers: Arc<Timers>,
    _scheduler: SchedulerTask,
}

impl Core {
    /// Starts the lease scheduler on the current runtime.
    pub(crate) fn new(store: Store, config: Config) -> Arc<Core> {
        let (timers, scheduler) = Timers::start();
        Arc::new(Core {
            store,
            queues: Queues::new(config.handoff_limit),
            config,
            timers,
            _scheduler: scheduler,
        })
    }
}
