//! Keeping the cache current with what other replicas store: their announcements as they
//! come, and a comparison of every version now and then.

use std::collections::BTreeSet;
use std::sync::Arc;

use ipnet::IpNet;
use tokio::sync::mpsc;

use super::cache::Ctx;
use super::{Error, RESYNC_PERIOD};
use crate::store::Event;

impl Ctx {
    /// Applies other writers' changes to the cache until the store stops reporting them, and
    /// compares every version now and then, in case an announcement never came (a writer
    /// that died between its commit and its announcement).
    pub(super) async fn watch(self: Arc<Self>, mut events: mpsc::UnboundedReceiver<Event>) {
        let mut every = tokio::time::interval(RESYNC_PERIOD);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        every.tick().await;
        loop {
            let event = tokio::select! {
                event = events.recv() => match event {
                    Some(event) => event,
                    None => return,
                },
                _ = every.tick() => Event::Resync,
            };
            match event {
                Event::Changed {
                    tenant,
                    space,
                    subnet,
                    version,
                } if tenant == self.tenant => {
                    if let Err(e) = self.catch_up(&space, subnet, version, false).await {
                        // The next write of the subnet, or the next resync, reloads it.
                        tracing::warn!(space, %subnet, error = %e, "cannot load another replica's change");
                    }
                }
                Event::Changed { .. } | Event::Directory { .. } => {}
                Event::Resync => self.resync().await,
            }
        }
    }

    /// Compares every cached version with the stored ones and catches up where they differ,
    /// retrying until the store answers.
    async fn resync(&self) {
        while let Err(e) = self.sync(None).await {
            tracing::warn!(error = %e, "cannot compare the cache with the store; retrying");
            tokio::time::sleep(std::time::Duration::from_millis(250)).await;
        }
    }

    /// Compares one cached subnet's version with the stored one, and catches up if they
    /// differ.
    pub(super) async fn recheck(&self, space: &str, net: IpNet) -> Result<(), Error> {
        let stored = self.store.version(&self.tenant, space, net).await?;
        let cached = match self.spaces.get(space) {
            Some(cache) => cache
                .index
                .read()
                .await
                .get(&net)
                .map(|cell| cell.version()),
            None => None,
        };
        if stored != cached {
            self.catch_up(space, net, stored.unwrap_or(0), true).await?;
        }
        Ok(())
    }

    /// Compares the cached versions of one address space's subnets (of every space, when
    /// `only` is `None`) with the stored ones, and catches up where they differ.
    pub(super) async fn sync(&self, only: Option<&str>) -> Result<(), Error> {
        let wanted = |space: &str| only.is_none_or(|o| o == space);
        let stored = self.store.versions(&self.tenant).await?;
        let mut seen = BTreeSet::new();
        for (space, net, version) in stored {
            if wanted(&space) {
                // Exactly, though versions only grow (a subnet created again continues after the
                // deleted one's last version): a cached version past the stored one is wrong.
                self.catch_up(&space, net, version, true).await?;
                seen.insert((space, net));
            }
        }
        for (name, cache) in self.spaces.iter().filter(|(name, _)| wanted(name)) {
            let cached: Vec<IpNet> = cache.index.read().await.keys().copied().collect();
            for net in cached {
                if !seen.contains(&(name.clone(), net)) {
                    self.catch_up(name, net, 0, false).await?;
                }
            }
        }
        Ok(())
    }

    /// Brings one subnet of the cache up to `version` (0: deleted), as another writer
    /// stored it; a cached version past it is kept unless `exact`.
    pub(super) async fn catch_up(
        &self,
        space: &str,
        net: IpNet,
        version: u64,
        exact: bool,
    ) -> Result<(), Error> {
        let current = |cached: u64| {
            if exact {
                cached == version
            } else {
                cached >= version
            }
        };
        let Some(cache) = self.spaces.get(space) else {
            tracing::debug!(
                space,
                "ignoring a change in an address space not configured here"
            );
            return Ok(());
        };
        let cell = cache.index.read().await.get(&net).cloned();
        match cell {
            Some(cell) if version > 0 && current(cell.version()) => Ok(()),
            Some(cell) if version > 0 => {
                let mut state = cell.state.lock().await;
                if !current(state.version) {
                    state.stale = true;
                }
                let refreshed = self.refresh(space, net, &cell, &mut state).await;
                let gone = state.subnet.is_none();
                drop(state);
                if gone {
                    Box::pin(self.catch_up(space, net, 0, false)).await?;
                }
                refreshed.map(|_| ())
            }
            Some(_) => {
                // Deleted elsewhere: drop it unless it came back (index, then cell lock).
                let mut index = cache.index.write().await;
                match index.get(&net).cloned() {
                    Some(cell) => {
                        let mut state = cell.state.lock().await;
                        state.stale = true;
                        self.refresh(space, net, &cell, &mut state).await?;
                        if state.subnet.is_none() {
                            index.remove(&net);
                        }
                        Ok(())
                    }
                    None => Ok(()),
                }
            }
            None if version > 0 => self.adopt_unlocked(cache, space, net).await.map(|_| ()),
            None => Ok(()),
        }
    }
}
