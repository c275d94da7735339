//! CreateContainer: one blocking task with a rollback stack (rootfs, image volumes, spec,
//! monitor); the record is written last.

use super::*;

impl Containers {
    /// CreateContainer. `pins` maps image names (the container's and its image volumes') to
    /// the image ids the caller locked: those are used, never what the name resolves to by now
    /// (a pull may have moved the tag to an image nobody locked). Names not pinned are looked up.
    pub async fn create(
        self: &Arc<Self>,
        req: cri::CreateContainerRequest,
        pins: ImagePins,
    ) -> Result<String> {
        let config = req
            .config
            .clone()
            .ok_or_else(|| Error::InvalidArgument("container config is required".into()))?;
        let meta = config
            .metadata
            .clone()
            .ok_or_else(|| Error::InvalidArgument("container metadata is required".into()))?;
        if meta.name.is_empty() || meta.name.contains(['/', '\0']) {
            return Err(Error::InvalidArgument(format!(
                "container name {} is not valid",
                crate::util::quote(&meta.name)
            )));
        }
        validate::container_config(&config, validate::Node::get())?;
        let pod = match self.sandboxes.resolve(&req.pod_sandbox_id) {
            Ok(pod) => pod,
            Err(Error::NotFound(m)) => return Err(Error::NotFound(m)),
            Err(e) => return Err(e),
        };
        if pod.state != SandboxState::Ready {
            return Err(Error::FailedPrecondition(format!(
                "pod sandbox {} is not ready",
                pod.id
            )));
        }
        let image_name = config
            .image
            .as_ref()
            .map(|i| i.image.clone())
            .unwrap_or_default();
        if image_name.is_empty() {
            return Err(Error::InvalidArgument("container image is required".into()));
        }
        let image = self.pinned_image(&image_name, &pins).ok_or_else(|| {
            Error::NotFound(format!(
                "image {} not found",
                crate::util::quote(&image_name)
            ))
        })?;
        let key = record::name_key(&pod.id, &meta.name, meta.attempt);
        let this = self.clone();
        crate::telemetry::spawn(async move {
            let _held = this.creating.lock(&key).await;
            if let Some(existing) = lock(&this.names).get(&key).cloned() {
                return Err(Error::AlreadyExists(format!(
                    "container {:?} (attempt {}) already exists in pod sandbox {} as {existing}",
                    meta.name, meta.attempt, pod.id
                )));
            }
            let started = Instant::now();
            let worker = this.clone();
            let rec = crate::telemetry::spawn_blocking(move || {
                worker.create_blocking(&pod, config, &image, &pins)
            })
            .await
            .map_err(join_err)??;
            this.metrics
                .container_create_seconds
                .observe(started.elapsed().as_secs_f64());
            lock(&this.names).insert(key, rec.id.clone());
            this.update_gauge();
            this.publish(&rec, EventKind::Created);
            this.watch_exit(&rec);
            Ok(rec.id.clone())
        })
        .await
        .map_err(join_err)?
    }

    /// The image `name` was pinned to, else what it resolves to now.
    fn pinned_image(
        &self,
        name: &str,
        pins: &ImagePins,
    ) -> Option<Arc<crate::image::store::ImageRecord>> {
        match pins.get(name) {
            Some(id) => self.images.lookup(id),
            None => self.images.lookup(name),
        }
    }

    pub(super) fn create_blocking(
        &self,
        pod: &SandboxRecord,
        config: cri::ContainerConfig,
        image: &crate::image::store::ImageRecord,
        pins: &ImagePins,
    ) -> Result<Arc<ContainerRecord>> {
        let mut undo = Rollback::new();
        let result = self.create_steps(pod, config, image, pins, &mut undo);
        if result.is_ok() {
            undo.disarm();
        }
        result
    }

    pub(super) fn create_steps(
        &self,
        pod: &SandboxRecord,
        config: cri::ContainerConfig,
        image: &crate::image::store::ImageRecord,
        pins: &ImagePins,
        undo: &mut Rollback,
    ) -> Result<Arc<ContainerRecord>> {
        let runtime = self.runtime(&pod.spec.runtime_handler)?.clone();
        if let Some(m) = config.mounts.iter().find(|m| m.recursive_read_only) {
            if !runtime.supports_rro() {
                return Err(Error::InvalidArgument(format!(
                    "mount {}: recursive read-only mounts are not supported by runtime handler {:?}",
                    m.container_path,
                    runtime.name()
                )));
            }
        }
        if let Some(m) = config
            .mounts
            .iter()
            .find(|m| !m.uid_mappings.is_empty() || !m.gid_mappings.is_empty())
        {
            if !runtime.supports_idmap() {
                return Err(Error::InvalidArgument(format!(
                    "mount {}: idmapped mounts with their own mappings are not supported by runtime handler {:?}",
                    m.container_path,
                    runtime.name()
                )));
            }
        }
        let id = new_id()?;
        let meta = config.metadata.clone().unwrap_or_default();
        // Where the time goes, logged with "container created".
        let t0 = Instant::now();
        let mut phases = [0u128; 5];
        let mut lap = {
            let mut last = t0;
            move |slot: &mut u128| {
                let now = Instant::now();
                *slot = now.duration_since(last).as_micros();
                last = now;
            }
        };

        // Directories: bundle, monitor dir (short), storage.
        let bundle = self.settings.bundles_dir.join(&id);
        let monitor_dir = self.settings.monitors_dir.join(&id[..12]);
        let storage = self.settings.storage_dir.join(&id);
        for dir in [&bundle, &monitor_dir, &storage] {
            std::fs::create_dir(dir).map_err(io_err("create", dir))?;
            let d = dir.clone();
            undo.push("remove container dir", move || {
                std::fs::remove_dir_all(&d).or_else(|e| {
                    if e.kind() == std::io::ErrorKind::NotFound {
                        Ok(())
                    } else {
                        Err(format!("{}: {e}", d.display()))
                    }
                })
            });
        }

        lap(&mut phases[0]);
        // Rootfs. In a pod user namespace the layers (and the volumes, below) are idmapped
        // clones, staged until the runtime has made its own mounts of them.
        let lowers = self.images.store.lower_dirs(image);
        let target = bundle.join("rootfs");
        let (upper, work) = (storage.join("upper"), storage.join("work"));
        let userns = match (&pod.spec.user_namespace, pod.ns_path("user")) {
            (None, _) => None,
            (Some(map), Some(path)) => {
                let file = std::fs::File::open(&path).map_err(io_err("open", &path))?;
                Some((map.host_root(), file))
            }
            (Some(_), None) => {
                return Err(Error::FailedPrecondition(format!(
                    "pod sandbox {} has lost its user namespace",
                    pod.id
                )))
            }
        };
        let mut staging = None;
        match &userns {
            None => rootfs::mount(&lowers, &self.settings.links_dir, &upper, &work, &target)
                .map_err(io_err("mount rootfs at", &target))?,
            Some(((uid, gid), ns)) => {
                let dir = self.settings.idmap_dir.join(&id[..12]);
                let mut st = crate::idmap::Staging::new(&dir).map_err(io_err("create", &dir))?;
                let mut staged = Vec::with_capacity(lowers.len());
                for lower in &lowers {
                    staged.push(
                        st.add(lower, ns.as_fd(), false)
                            .map_err(io_err("idmapped mount of layer", lower))?,
                    );
                }
                // The merged root takes the upper dir's owner: the container's root.
                std::fs::create_dir_all(&upper).map_err(io_err("create", &upper))?;
                std::os::unix::fs::chown(&upper, Some(*uid), Some(*gid))
                    .map_err(io_err("chown", &upper))?;
                rootfs::mount_overlay(&staged, &upper, &work, &target)
                    .map_err(io_err("mount rootfs at", &target))?;
                staging = Some(st);
            }
        }
        {
            let t = target.clone();
            undo.push("unmount rootfs", move || {
                rootfs::unmount(&t).map_err(|e| e.to_string())
            });
        }

        // Image volumes: each image's layers as a read-only overlay at <bundle>/volumes/<n>
        // (idmapped layers in a pod user namespace, like the rootfs), bind-mounted by the
        // runtime as the mount's host path.
        let mut spec_config = config.clone();
        let mut image_volumes = Vec::new();
        let volumes_dir = bundle.join("volumes");
        for m in spec_config
            .mounts
            .iter_mut()
            .filter(|m| spec::is_image_volume(m))
        {
            let name = m.image.as_ref().map(|i| i.image.as_str()).unwrap_or("");
            let volume_image = self.pinned_image(name, pins).ok_or_else(|| {
                Error::NotFound(format!(
                    "mount {}: image {name:?} not found",
                    m.container_path
                ))
            })?;
            let mut lowers = self.images.store.lower_dirs(&volume_image);
            let n = image_volumes.len().to_string();
            let vstorage = storage.join("volumes").join(&n);
            let (vupper, vwork) = (vstorage.join("upper"), vstorage.join("work"));
            if let (Some(((uid, gid), ns)), Some(st)) = (&userns, staging.as_mut()) {
                for lower in lowers.iter_mut() {
                    *lower = st
                        .add(lower, ns.as_fd(), false)
                        .map_err(io_err("idmapped mount of layer", lower))?;
                }
                // The volume's root takes the upper dir's owner: the container's root.
                std::fs::create_dir_all(&vupper).map_err(io_err("create", &vupper))?;
                std::os::unix::fs::chown(&vupper, Some(*uid), Some(*gid))
                    .map_err(io_err("chown", &vupper))?;
            }
            let vtarget = volumes_dir.join(&n);
            rootfs::mount_overlay_readonly(&lowers, &vupper, &vwork, &vtarget)
                .map_err(io_err("mount image volume at", &vtarget))?;
            {
                let t = vtarget.clone();
                undo.push("unmount image volume", move || {
                    rootfs::unmount(&t).map_err(|e| e.to_string())
                });
            }
            m.host_path = vtarget.to_string_lossy().into_owned();
            image_volumes.push(record::ImageVolume {
                container_path: m.container_path.clone(),
                image_id: volume_image.id.clone(),
                image_ref: volume_image
                    .repo_digests
                    .first()
                    .cloned()
                    .unwrap_or_else(|| volume_image.id.clone()),
            });
        }

        lap(&mut phases[1]);
        // The OCI spec.
        for m in &spec_config.mounts {
            if !Path::new(&m.host_path).exists() {
                return Err(Error::InvalidArgument(format!(
                    "mount {}: host path {:?} does not exist",
                    m.container_path, m.host_path
                )));
            }
        }
        if let (Some((_, ns)), Some(st)) = (&userns, staging.as_mut()) {
            // A mount with its own mappings is the runtime's to idmap; an image volume is made
            // of idmapped layers already.
            for m in spec_config
                .mounts
                .iter_mut()
                .filter(|m| m.uid_mappings.is_empty() && !spec::is_image_volume(m))
            {
                match st.add(Path::new(&m.host_path), ns.as_fd(), true) {
                    Ok(p) => m.host_path = p.to_string_lossy().into_owned(),
                    // E.g. a filesystem without idmap support: the volume still works, its
                    // files show the overflow id inside.
                    Err(e) => tracing::warn!(
                        container_id = %id, host_path = %m.host_path, error = %e,
                        "volume is not idmapped"
                    ),
                }
            }
        }
        let spec_config = &spec_config;
        let pod_config: cri::PodSandboxConfig = pod.config.clone();
        let view = image_view(&image.config);
        let seccomp_localhost = localhost_seccomp(&config);
        let target_pidns = self.target_pidns(&config)?;
        let mut host = self.settings.host.clone();
        let privileged = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .is_some_and(|s| s.privileged);
        if privileged || !config.devices.is_empty() {
            host.devices = host::host_devices();
        }
        let input = spec::SpecInput {
            container_id: &id,
            config: spec_config,
            pod: spec::PodView {
                sandbox_id: &pod.id,
                config: &pod_config,
                netns: pod.ns_path("net"),
                ipcns: pod.ns_path("ipc"),
                utsns: pod.ns_path("uts"),
                pidns: pod
                    .infra
                    .as_ref()
                    .map(|i| PathBuf::from(format!("/proc/{}/ns/pid", i.pid))),
                userns: pod.ns_path("user"),
                hostname: pod.spec.hostname.clone(),
                resolv_conf: Some(pod.run_dir.join("resolv.conf")),
                hosts: Some(pod.run_dir.join("hosts")),
                hostname_file: Some(pod.run_dir.join("hostname")),
                shm: pod
                    .spec
                    .namespaces
                    .ipc
                    .ne(&crate::sandbox::record::NsMode::Node)
                    .then(|| pod.shm_path()),
                cgroup_parent: pod.spec.cgroup_parent.clone(),
            },
            image: &view,
            rootfs: target.clone(),
            etc_passwd: rootfs::read_small(&target, "etc/passwd"),
            etc_group: rootfs::read_small(&target, "etc/group"),
            seccomp_localhost,
            target_pidns,
            host: &host,
        };
        let generated = spec::generate(&input).map_err(Error::from)?;
        let spec_json = spec::config_json(&generated.spec).map_err(Error::from)?;
        let config_path = bundle.join("config.json");
        std::fs::write(&config_path, spec_json).map_err(io_err("write", &config_path))?;

        // The CRI log file: inside the pod's log directory (both checked: an absolute
        // directory, a relative path without `..`; pods restored from before the check too).
        let log_path = if pod.spec.log_directory.is_empty() || config.log_path.is_empty() {
            monitor_dir.join("container.log")
        } else {
            validate::log_directory(&pod.spec.log_directory)?;
            validate::log_path(&config.log_path)?;
            Path::new(&pod.spec.log_directory).join(&config.log_path)
        };
        if let Some(parent) = log_path.parent() {
            std::fs::create_dir_all(parent).map_err(io_err("create log dir", parent))?;
        }
        // A symlink, fifo or directory there is refused here with a clear error; the monitor
        // opens with O_NOFOLLOW as well, so a link planted after this check fails the create.
        if let Ok(meta) = std::fs::symlink_metadata(&log_path) {
            if !meta.file_type().is_file() {
                return Err(Error::InvalidArgument(format!(
                    "log path {} exists and is not a regular file",
                    log_path.display()
                )));
            }
        }

        lap(&mut phases[2]);
        // Create through the monitor.
        let created = runtime
            .create(&CreateRequest {
                id: &id,
                bundle: &bundle,
                monitor_dir: &monitor_dir,
                log_path: &log_path,
                terminal: config.tty,
                stdin: config.stdin,
                stdin_once: config.stdin_once,
            })
            .map_err(|e| Error::Internal(e.to_string()))?;
        lap(&mut phases[3]);
        // The runtime has its own mounts of the staged ones now.
        drop(staging);
        {
            let (rt, cid) = (runtime.clone(), id.clone());
            undo.push("delete runtime container", move || {
                rt.delete(&cid).map_err(|e| e.to_string())
            });
        }

        let user = UserRecord {
            uid: i64::from(generated.user.uid),
            gid: i64::from(generated.user.gid),
            supplemental_groups: generated
                .user
                .additional_gids
                .iter()
                .map(|g| i64::from(*g))
                .collect(),
        };
        let resources = config
            .linux
            .as_ref()
            .and_then(|l| l.resources.clone())
            .unwrap_or_default();
        let rec = ContainerRecord {
            id: id.clone(),
            pod_id: pod.id.clone(),
            name: meta.name.clone(),
            attempt: meta.attempt,
            image: config
                .image
                .as_ref()
                .map(|i| i.image.clone())
                .unwrap_or_default(),
            image_id: image.id.clone(),
            image_ref: image
                .repo_digests
                .first()
                .cloned()
                .unwrap_or_else(|| image.id.clone()),
            state: ContainerState::Created,
            created_at: now_ns(),
            started_at: 0,
            finished_at: 0,
            exit_code: 0,
            reason: String::new(),
            message: String::new(),
            pid: created.pid,
            monitor_pid: created.monitor_pid,
            runtime_handler: pod.spec.runtime_handler.clone(),
            bundle,
            monitor_dir,
            storage,
            log_path,
            labels: config.labels.clone().into_iter().collect(),
            annotations: config.annotations.clone().into_iter().collect(),
            user,
            stop_signal: generated.stop_signal,
            tty: config.tty,
            config: config.clone(),
            resources: resources.clone(),
            config_pb: String::new(),
            resources_pb: String::new(),
            monitor_lost: false,
            image_volumes,
        };
        let stored = self.records.put(&id, rec)?;
        lap(&mut phases[4]);
        let [dirs_us, rootfs_us, spec_us, runtime_create_us, record_us] = phases;
        tracing::info!(
            container_id = %id, pod_id = %pod.id, pid = created.pid,
            total_us = t0.elapsed().as_micros() as u64,
            dirs_us = dirs_us as u64, rootfs_us = rootfs_us as u64, spec_us = spec_us as u64,
            runtime_create_us = runtime_create_us as u64, record_us = record_us as u64,
            "container created"
        );
        Ok(stored)
    }

    pub(super) fn target_pidns(&self, config: &cri::ContainerConfig) -> Result<Option<PathBuf>> {
        let ns = config
            .linux
            .as_ref()
            .and_then(|l| l.security_context.as_ref())
            .and_then(|s| s.namespace_options.as_ref());
        let Some(ns) = ns else { return Ok(None) };
        if ns.pid != cri::NamespaceMode::Target as i32 {
            return Ok(None);
        }
        let target = self.resolve(&ns.target_id).map_err(|_| {
            Error::NotFound(format!(
                "target container {:?} of the pid namespace not found",
                ns.target_id
            ))
        })?;
        Ok(Some(PathBuf::from(format!("/proc/{}/ns/pid", target.pid))))
    }
}
