//! The container side of exec, ExecSync and attach: a running container, the process file
//! of each exec (`exec.rs`), and the monitor's attach socket.

use super::*;

impl Containers {
    /// ExecSync: the command runs as the container's own process would (see [`exec`]), without
    /// stdin; a timeout, or the caller going away, kills it with everything it started.
    pub async fn exec_sync(
        self: &Arc<Self>,
        id: &str,
        cmd: &[String],
        timeout: Option<Duration>,
    ) -> Result<ExecOutput> {
        validate::exec_cmd(cmd)?;
        let rec = self.running(id).await?;
        let runtime = self.runtime(&rec.runtime_handler)?.clone();
        let files = Self::prepare_exec(&rec, cmd, false).await?;
        let command = runtime.exec_command(&rec.id, &files);
        Ok(crate::runtime::oci::exec_sync(&rec.id, command, files, timeout).await?)
    }

    /// The process file of one exec of `cmd` in `rec` (off the async workers).
    pub(super) async fn prepare_exec(
        rec: &ContainerRecord,
        cmd: &[String],
        tty: bool,
    ) -> Result<exec::ExecFiles> {
        let token = new_id()?;
        let bundle = rec.bundle.clone();
        let monitor_dir = rec.monitor_dir.clone();
        let cmd = cmd.to_vec();
        crate::telemetry::spawn_blocking(move || {
            exec::prepare(&bundle, &monitor_dir, &token[..12], &cmd, tty)
        })
        .await
        .map_err(join_err)?
    }

    /// A running container, or `FailedPrecondition` naming its state.
    pub async fn running(self: &Arc<Self>, id: &str) -> Result<Arc<ContainerRecord>> {
        let rec = self.status(id).await?;
        if rec.state != ContainerState::Running {
            return Err(Error::FailedPrecondition(format!(
                "container {} is {}, not running",
                rec.id,
                rec.state.name()
            )));
        }
        Ok(rec)
    }

    /// Starts a streaming exec (the `Exec` session) in a running container.
    pub async fn spawn_exec(
        self: &Arc<Self>,
        id: &str,
        cmd: &[String],
        tty: bool,
        stdin: bool,
        stdout: bool,
        stderr: bool,
    ) -> Result<crate::runtime::oci::ExecProcess> {
        validate::exec_cmd(cmd)?;
        let rec = self.running(id).await?;
        let runtime = self.runtime(&rec.runtime_handler)?.clone();
        let files = Self::prepare_exec(&rec, cmd, tty).await?;
        let command = runtime.exec_command(&rec.id, &files);
        Ok(crate::runtime::oci::spawn_exec(
            &rec.id, command, files, tty, stdin, stdout, stderr,
        )?)
    }

    /// Where an `Attach` session joins a container: its monitor's attach socket.
    pub fn attach_target(&self, id: &str) -> Result<AttachTarget> {
        let rec = self.resolve(id)?;
        Ok(AttachTarget {
            socket: monitor::attach_socket(&rec.monitor_dir),
            monitor_dir: rec.monitor_dir.clone(),
            tty: rec.tty,
            stdin_once: rec.config.stdin_once,
        })
    }
}
