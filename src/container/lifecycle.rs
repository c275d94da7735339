//! Start, stop (signal → timeout → SIGKILL, through the runtime), remove, resource updates and
//! log reopening of one container, each under that container's lock.

use super::*;

impl Containers {
    /// StartContainer.
    pub async fn start(self: &Arc<Self>, id: &str) -> Result<()> {
        let rec = self.resolve(id)?;
        let _held = self.locks.lock(&rec.id).await;
        let rec = self.resolve(&rec.id)?;
        if rec.state != ContainerState::Created {
            return Err(Error::FailedPrecondition(format!(
                "container {} is {}, not created",
                rec.id,
                rec.state.name()
            )));
        }
        let runtime = self.runtime(&rec.runtime_handler)?.clone();
        let this = self.clone();
        let started = Instant::now();
        crate::telemetry::spawn_blocking(move || {
            // Taken before the start: the process cannot have run, or exited, any earlier (the
            // monitor stamps the exit; a time taken after the start could come after it).
            let requested_at = now_ns();
            if let Err(e) = runtime.start(&rec.id) {
                // A start the runtime already did (the daemon died before recording it, and
                // restore could not tell): the node is the truth.
                match runtime.state(&rec.id) {
                    Ok(Some(st)) if st.status == "running" && st.pid == rec.pid => {
                        tracing::warn!(container_id = %rec.id, "the runtime had already started the container; recording it");
                    }
                    _ => return Err(e.into()),
                }
            }
            this.mark_started(&rec.id, requested_at)?;
            Ok::<_, Error>(())
        })
        .await
        .map_err(join_err)??;
        self.metrics
            .container_start_seconds
            .observe(started.elapsed().as_secs_f64());
        self.update_gauge();
        Ok(())
    }

    /// Records a start at `started_at` (Created → Running; a container that already exited
    /// stays Exited) and publishes it, in record order.
    pub(super) fn mark_started(&self, id: &str, started_at: i64) -> Result<()> {
        let modified = self.records.modify(
            id,
            |cur| {
                let mut next = cur.clone();
                // The exit watcher may have seen a short-lived process exit already: it
                // stays Exited, and it started no later than it finished.
                next.started_at = started_at;
                if cur.state == ContainerState::Created {
                    next.state = ContainerState::Running;
                } else if cur.state == ContainerState::Exited && cur.finished_at > 0 {
                    next.started_at = next.started_at.min(cur.finished_at);
                }
                Ok::<_, Error>(Some(next))
            },
            |stored| self.publish(stored, EventKind::Started),
        )?;
        if let Modified::Changed(stored) = modified {
            tracing::info!(container_id = %stored.id, "container started");
        }
        Ok(())
    }

    /// StopContainer: the stop signal, `timeout` to exit, then SIGKILL. Missing or stopped
    /// containers succeed.
    pub async fn stop(self: &Arc<Self>, id: &str, timeout: Duration) -> Result<()> {
        let rec = match self.resolve(id) {
            Ok(rec) => rec,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let _held = self.locks.lock(&rec.id).await;
        let this = self.clone();
        let id = rec.id.clone();
        crate::telemetry::spawn_blocking(move || this.stop_blocking(&id, timeout))
            .await
            .map_err(join_err)??;
        self.update_gauge();
        Ok(())
    }

    pub(super) fn stop_blocking(&self, id: &str, timeout: Duration) -> Result<()> {
        let rec = self.refresh_blocking(id)?;
        if rec.state == ContainerState::Exited {
            return Ok(());
        }
        let runtime = self.runtime(&rec.runtime_handler)?.clone();
        if rec.state == ContainerState::Created {
            // Never started: nothing runs but the init waiting for start; kill it.
            let _ = runtime.kill(id, SIGKILL, true);
            self.wait_exit(&rec, Duration::from_secs(10));
            self.refresh_with(id, Some(SIGKILL))?;
            return Ok(());
        }
        let note_signal = |signal: i32| {
            if rec.monitor_lost {
                lock(&self.signalled).insert(id.to_string(), signal);
            }
        };
        if !timeout.is_zero() {
            note_signal(rec.stop_signal);
            if let Err(e) = runtime.kill(id, rec.stop_signal, false) {
                tracing::debug!(container_id = %id, error = %e, "stop signal not delivered");
            }
            if self.wait_exit(&rec, timeout) {
                self.refresh_with(id, Some(rec.stop_signal))?;
                return Ok(());
            }
        }
        note_signal(SIGKILL);
        let t0 = Instant::now();
        if let Err(e) = runtime.kill(id, SIGKILL, true) {
            tracing::debug!(container_id = %id, error = %e, "SIGKILL not delivered");
        }
        let t_kill = t0.elapsed();
        if !self.wait_exit(&rec, Duration::from_secs(10)) {
            return Err(Error::DeadlineExceeded(format!(
                "container {id} did not exit after SIGKILL"
            )));
        }
        let t_exit = t0.elapsed();
        self.refresh_with(id, Some(SIGKILL))?;
        // Where the time went (microseconds, each phase on its own).
        let us = |d: Duration| d.as_micros() as u64;
        tracing::info!(
            container_id = %id,
            runtime_kill_us = us(t_kill),
            exit_wait_us = us(t_exit - t_kill),
            record_us = us(t0.elapsed() - t_exit),
            "container stopped"
        );
        Ok(())
    }

    /// RemoveContainer: kills a running container first; missing containers succeed.
    ///
    /// The answer comes once the record is gone (the container is then removed for every
    /// client); the runtime's delete, the rootfs unmount and the directories are torn down
    /// right after, off the answer's path ([`Containers::teardown_blocking`]). What depends on
    /// that teardown waits for it: RemovePodSandbox (the pod's cgroup) and RemoveImage (the
    /// layers under the rootfs), through [`Containers::wait_teardowns`]. A daemon killed before
    /// a teardown finished leaves a bundle without a record, which the next start cleans up
    /// ([`Containers::clean_orphans`]).
    pub async fn remove(self: &Arc<Self>, id: &str) -> Result<()> {
        let rec = match self.resolve(id) {
            Ok(rec) => rec,
            Err(Error::NotFound(_)) => return Ok(()),
            Err(e) => return Err(e),
        };
        let _held = self.locks.lock(&rec.id).await;
        if self.records.get(&rec.id).is_none() {
            return Ok(()); // removed by the call that held the lock before
        }
        // Registered before the record goes, so that nothing that waits for teardowns (an
        // image removal) can miss this one; the teardown is started by the blocking task
        // itself, so a client that goes away after the record is gone cannot prevent it.
        let (done, rx) = tokio::sync::watch::channel(false);
        lock(&self.teardowns).insert(
            rec.id.clone(),
            Teardown {
                rec: rec.clone(),
                done: rx,
                failed: false,
            },
        );
        let this = self.clone();
        let id = rec.id.clone();
        crate::telemetry::spawn_blocking(move || {
            let removed = this
                .stop_blocking(&id, Duration::ZERO)
                .and_then(|()| this.forget_blocking(&id));
            match removed {
                Ok(Some(rec)) => {
                    this.clone().teardown_in_background(rec, done);
                    Ok(())
                }
                other => {
                    lock(&this.teardowns).remove(&id);
                    let _ = done.send(true);
                    other.map(|_| ())
                }
            }
        })
        .await
        .map_err(join_err)??;
        self.update_gauge();
        Ok(())
    }

    /// Removes the record, the name and the samples of a stopped container and publishes its
    /// removal; the node's side is [`Containers::teardown_blocking`]'s job. `None`: no record.
    fn forget_blocking(&self, id: &str) -> Result<Option<Arc<ContainerRecord>>> {
        let Some(rec) = self.records.get(id) else {
            return Ok(None);
        };
        // Refuse before anything is removed when the handler is not configured any more.
        self.runtime(&rec.runtime_handler)?;
        self.records.remove(id)?;
        lock(&self.names).remove(&rec.name_key());
        lock(&self.signalled).remove(id);
        self.forget_samples(id);
        tracing::info!(container_id = %id, "container removed");
        self.publish(&rec, EventKind::Deleted);
        Ok(Some(rec))
    }

    /// Tears a removed container down on the blocking pool; `done` tells those waiting
    /// ([`Containers::wait_teardowns`]) when it has ended. Needs the runtime's context (an async
    /// worker or a blocking-pool thread).
    fn teardown_in_background(
        self: Arc<Self>,
        rec: Arc<ContainerRecord>,
        done: tokio::sync::watch::Sender<bool>,
    ) {
        let this = self;
        crate::telemetry::spawn_blocking(move || {
            let _span = tracing::info_span!("container.teardown", container_id = %rec.id).entered();
            let started = Instant::now();
            match this.teardown_blocking(&rec) {
                Ok(()) => {
                    tracing::debug!(container_id = %rec.id, elapsed_ms = started.elapsed().as_millis() as u64, "container torn down");
                    lock(&this.teardowns).remove(&rec.id);
                }
                Err(e) => {
                    tracing::warn!(container_id = %rec.id, error = %e, "container teardown failed; retried by the pod's or an image's removal, else at the next start");
                    if let Some(t) = lock(&this.teardowns).get_mut(&rec.id) {
                        t.failed = true;
                    }
                }
            }
            let _ = done.send(true);
        });
    }

    /// The node's side of a removed container: the runtime's state, a monitor still there, the
    /// rootfs and image volume mounts, then the storage, monitor and bundle dirs — the bundle
    /// last, as it is what [`Containers::clean_orphans`] finds an unfinished teardown by.
    pub(super) fn teardown_blocking(&self, rec: &ContainerRecord) -> Result<()> {
        let runtime = self.runtime(&rec.runtime_handler)?.clone();
        runtime.delete(&rec.id).map_err(Error::from)?;
        if monitor_alive(rec) {
            kill_pid(rec.monitor_pid);
        }
        rootfs::unmount(&rec.rootfs()).map_err(io_err("unmount", &rec.rootfs()))?;
        rootfs::unmount_children(&rec.volumes_dir())
            .map_err(io_err("unmount image volumes under", &rec.volumes_dir()))?;
        for dir in [&rec.storage, &rec.monitor_dir, &rec.bundle] {
            match std::fs::remove_dir_all(dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err("remove", dir)(e)),
            }
        }
        Ok(())
    }

    /// Waits until the teardowns of the removed containers `which` selects have finished, then
    /// retries those that failed; an error names the first that fails again (the caller, a pod
    /// or image removal, fails with it and its retry tries again).
    pub async fn wait_teardowns(
        self: &Arc<Self>,
        which: impl Fn(&ContainerRecord) -> bool,
    ) -> Result<()> {
        let pending: Vec<tokio::sync::watch::Receiver<bool>> = lock(&self.teardowns)
            .values()
            .filter(|t| which(&t.rec))
            .map(|t| t.done.clone())
            .collect();
        for mut done in pending {
            // A dropped sender (a panicked task) ends the wait as well.
            let _ = done.wait_for(|d| *d).await;
        }
        let failed: Vec<Arc<ContainerRecord>> = lock(&self.teardowns)
            .values()
            .filter(|t| t.failed && which(&t.rec))
            .map(|t| t.rec.clone())
            .collect();
        for rec in failed {
            let this = self.clone();
            crate::telemetry::spawn_blocking(move || {
                this.teardown_blocking(&rec)?;
                lock(&this.teardowns).remove(&rec.id);
                Ok::<_, Error>(())
            })
            .await
            .map_err(join_err)??;
        }
        Ok(())
    }

    /// Stops every container of a pod (StopPodSandbox).
    pub async fn stop_pod(self: &Arc<Self>, pod_id: &str) -> Result<()> {
        for id in self.in_pod(pod_id) {
            self.stop(&id, Duration::ZERO).await?;
        }
        Ok(())
    }

    /// Removes every container of a pod (RemovePodSandbox).
    /// Returns once their teardowns are done too (the pod's cgroup is removed next).
    pub async fn remove_pod(self: &Arc<Self>, pod_id: &str) -> Result<()> {
        for id in self.in_pod(pod_id) {
            self.remove(&id).await?;
        }
        self.wait_teardowns(|r| r.pod_id == pod_id).await
    }

    /// UpdateContainerResources.
    pub async fn update(
        self: &Arc<Self>,
        id: &str,
        resources: cri::LinuxContainerResources,
    ) -> Result<()> {
        let rec = self.resolve(id)?;
        let _held = self.locks.lock(&rec.id).await;
        // Read under the lock: a stop that held it may have just ended the container.
        let rec = self.status(&rec.id).await?;
        if rec.state == ContainerState::Exited {
            return Err(Error::FailedPrecondition(format!(
                "container {} has exited",
                rec.id
            )));
        }
        validate::resources("linux", &resources, validate::Node::get())?;
        let runtime = self.runtime(&rec.runtime_handler)?.clone();
        let json = resources::resources_json(&resources, self.settings.host.cgroup_v2);
        let this = self.clone();
        crate::telemetry::spawn_blocking(move || {
            if let Err(e) = runtime.update(&rec.id, &json) {
                // The container exited on its own meanwhile: say so, not "internal".
                if this.refresh_blocking(&rec.id)?.state == ContainerState::Exited {
                    return Err(Error::FailedPrecondition(format!(
                        "container {} has exited",
                        rec.id
                    )));
                }
                return Err(e.into());
            }

            this.records.modify(
                &rec.id,
                |cur| {
                    let mut next = cur.clone();
                    next.resources = resources.clone();
                    Ok::<_, Error>(Some(next))
                },
                |_| {},
            )?;
            Ok::<_, Error>(())
        })
        .await
        .map_err(join_err)?
    }

    /// ReopenContainerLog.
    pub async fn reopen_log(self: &Arc<Self>, id: &str) -> Result<()> {
        let rec = self.status(id).await?;
        if rec.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is not running",
                rec.id
            )));
        }
        let dir = rec.monitor_dir.clone();
        crate::telemetry::spawn_blocking(move || monitor::reopen_log(&dir))
            .await
            .map_err(join_err)?
            .map_err(|e| Error::Internal(format!("reopen log of container {}: {e}", rec.id)))
    }
}
