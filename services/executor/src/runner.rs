//! One run, from its request to its completion: claim it, heartbeat while it goes, run its
//! steps in order (each on its targets in parallel, with retries), stream the log, report every
//! step, and complete it — or give it back, or stop at once when the lease is lost.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use opsconductor_api::credentials::v1::secret_material::Material;
use opsconductor_api::credentials::v1::RevealCredentialRequest;
use opsconductor_api::executor::v1::ActiveRun;
use opsconductor_api::jobs::v1::{
    step, ClaimRunRequest, ClaimRunResponse, CompleteRunRequest, HeartbeatRunRequest, Job,
    ParameterType, ReleaseRunRequest, ReportStepResultRequest, Run, RunRequested, RunState,
    RunStep, RunTarget, Step, StepState,
};
use opsconductor_api::targets::v1::{GetTargetRequest, Protocol};
use opsconductor_messaging::HandleError;
use opsconductor_platform::client::Clients;
use opsconductor_platform::time::{now_micros, to_std_duration, to_timestamp};
use opsconductor_platform::ApiError;
use opsconductor_template::{
    Context, RenderError, ShellScript, StepOutputs, TargetValues, Template, Values,
};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tonic::{Code, Status};
use tracing::Instrument;

use crate::contain::Containment;
use crate::http::{self, HttpRequest};
use crate::instance::{Instance, Stop};
use crate::logs::{Origin, RunLog};
use crate::shell::{self, Exit, ShellCommand};

const DEFAULT_RUN_TIMEOUT: Duration = Duration::from_secs(3600);
const DEFAULT_STEP_TIMEOUT: Duration = Duration::from_secs(600);
const DEFAULT_RETRY_DELAY: Duration = Duration::from_secs(10);

pub struct Runner {
    pub clients: Arc<Clients>,
    pub instance: Arc<Instance>,
    pub http: http::Client,
    pub contain: Arc<Containment>,
    /// How much of a run's output its log keeps.
    pub log_limits: crate::logs::Limits,
    /// Runs whose log reached its limit (`opsconductor_executor_runs_log_truncated_total`).
    pub truncated_logs: prometheus_client::metrics::counter::Counter,
}

fn reason(status: &Status) -> String {
    ApiError::from_status(status).reason().to_string()
}

/// Worth trying again at once: the jobs service (or its database) is busy or unreachable.
fn transient(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::Unavailable
            | Code::Internal
            | Code::DeadlineExceeded
            | Code::ResourceExhausted
            | Code::Unknown
    )
}

/// The jobs service says this lease is not (or no longer) ours.
fn lease_gone(status: &Status) -> bool {
    status.code() == Code::NotFound || reason(status) == "LEASE_LOST"
}

/// One run's execution state.
struct Execution {
    run: Run,
    job: Job,
    token: String,
    parameters: BTreeMap<String, String>,
    log: RunLog,
    stop: watch::Receiver<Stop>,
    /// Succeeded steps' outputs by (step name, target id).
    outputs: std::sync::Mutex<std::collections::HashMap<(String, String), String>>,
}

/// Earlier steps' outputs as a step on `target_id` sees them: that target's, or the output of
/// a step that ran without a target.
struct OutputsOn<'a> {
    outputs: &'a std::sync::Mutex<std::collections::HashMap<(String, String), String>>,
    target_id: &'a str,
}

impl StepOutputs for OutputsOn<'_> {
    fn lookup(&self, step: &str, json: &[String]) -> Result<String, RenderError> {
        let outputs = self.outputs.lock().unwrap_or_else(|p| p.into_inner());
        let output = outputs
            .get(&(step.to_string(), self.target_id.to_string()))
            .or_else(|| outputs.get(&(step.to_string(), String::new())))
            .ok_or_else(|| RenderError::NoOutput(step.to_string()))?;
        if json.is_empty() {
            return Ok(output.clone());
        }
        let missing = || RenderError::NoField(step.to_string(), json.join("."));
        let mut value: &serde_json::Value = &serde_json::from_str(output).map_err(|_| missing())?;
        for field in json {
            value = match value {
                serde_json::Value::Object(map) => map.get(field.as_str()),
                serde_json::Value::Array(items) => {
                    field.parse::<usize>().ok().and_then(|i| items.get(i))
                }
                _ => None,
            }
            .ok_or_else(missing)?;
        }
        Ok(match value {
            serde_json::Value::String(text) => text.clone(),
            other => other.to_string(),
        })
    }
}

impl Runner {
    /// Takes a run request: Ok once the run is claimed (it goes on in a task of its own) or
    /// when there is nothing to do (a duplicate, a run someone else holds or that ended).
    pub async fn take(
        self: &Arc<Self>,
        request: RunRequested,
        wait: Duration,
    ) -> Result<(), HandleError> {
        if self.instance.draining() {
            return Err(HandleError::retry("this executor is draining"));
        }
        let permit =
            match tokio::time::timeout(wait, self.instance.permits.clone().acquire_owned()).await {
                Ok(Ok(permit)) => permit,
                _ => return Err(HandleError::retry("this executor is at capacity")),
            };
        let info = ActiveRun {
            run_id: request.run_id.clone(),
            job_id: request.job_id.clone(),
            claim_time: Some(to_timestamp(now_micros())),
            ..ActiveRun::default()
        };
        let Some(stop) = self.instance.hold(info) else {
            tracing::debug!(run_id = %request.run_id, "duplicate run request for a run held here");
            return Ok(());
        };
        // A hiccup of the jobs service is retried here, briefly, before the request goes back
        // to the broker's delay ladder (whose next step is seconds away).
        let mut delay = Duration::from_millis(50);
        // Repeated with each retry: a retry whose first answer was lost gets the run again.
        let claim_key = format!("{:032x}", rand::random::<u128>());
        let claimed = loop {
            let claimed = self
                .clients
                .jobs()
                .claim_run(ClaimRunRequest {
                    executor_id: self.instance.id.clone(),
                    run_id: request.run_id.clone(),
                    claim_key: claim_key.clone(),
                })
                .await;
            match &claimed {
                Err(status) if transient(status) && delay < Duration::from_secs(2) => {
                    tracing::debug!(run_id = %request.run_id, %status, "claim failed; trying again");
                    tokio::time::sleep(delay).await;
                    delay *= 3;
                }
                _ => break claimed,
            }
        };
        match claimed {
            Ok(claim) => {
                let runner = self.clone();
                // A child of the request's message span: the run joins the trace that asked
                // for it, and the calls it makes (log, heartbeats, completion) hang under it.
                let span = tracing::info_span!(
                    "run",
                    run_id = %request.run_id,
                    job_id = %request.job_id,
                    otel.name = "run",
                );
                tokio::spawn(
                    async move { runner.execute(claim.into_inner(), stop, permit).await }
                        .instrument(span),
                );
                Ok(())
            }
            Err(status) => {
                self.instance.release(&request.run_id);
                match reason(&status).as_str() {
                    // Someone else's, or over: nothing to do. At its job's limit: the jobs
                    // service requests it again when a slot frees.
                    "RUN_ALREADY_CLAIMED" | "RUN_NOT_QUEUED" | "CONCURRENCY_LIMIT" => Ok(()),
                    _ if status.code() == Code::NotFound => Ok(()),
                    _ => Err(HandleError::retry(format!(
                        "claiming the run failed: {}",
                        status.message()
                    ))),
                }
            }
        }
    }

    async fn execute(
        self: Arc<Self>,
        claim: ClaimRunResponse,
        stop: watch::Receiver<Stop>,
        permit: OwnedSemaphorePermit,
    ) {
        let (Some(run), Some(job)) = (claim.run, claim.job) else {
            tracing::error!("the jobs service sent a claim without its run or job");
            return;
        };
        let run_id = run.id.clone();
        self.instance.update(&run_id, |a| {
            a.job_name = run.job_name.clone();
            a.attempt = run.attempt;
            a.lease_expire_time = claim.lease_expire_time;
        });
        let log = RunLog::new(claim.next_log_seq, self.log_limits);
        let flusher = log.spawn_flusher(
            self.clients.clone(),
            run_id.clone(),
            claim.lease_token.clone(),
        );
        let interval = claim
            .heartbeat_interval
            .as_ref()
            .and_then(to_std_duration)
            .filter(|d| !d.is_zero())
            .unwrap_or(Duration::from_secs(10));
        let heartbeat = self.spawn_heartbeat(run_id.clone(), claim.lease_token.clone(), interval);
        let timeout = job
            .timeout
            .as_ref()
            .and_then(to_std_duration)
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_RUN_TIMEOUT);
        let timer = {
            let instance = self.instance.clone();
            let run_id = run_id.clone();
            tokio::spawn(async move {
                tokio::time::sleep(timeout).await;
                instance.stop(&run_id, Stop::RunTimeout);
            })
        };
        let mut execution = Execution {
            token: claim.lease_token,
            parameters: claim.parameters.into_iter().collect(),
            log,
            stop,
            run,
            job,
            outputs: Default::default(),
        };
        execution.log.system(
            &Origin::default(),
            format!(
                "run {} attempt {} on executor {}",
                run_id, execution.run.attempt, self.instance.id
            ),
        );
        let failed = match self.reveal_secret_parameters(&mut execution).await {
            Ok(()) => self.steps(&mut execution).await,
            Err(error) => Some(error),
        };
        timer.abort();
        let why = execution.stop.borrow().clone();
        let (state, error) = match (&why, failed) {
            (Stop::LeaseLost, _) => {
                tracing::warn!(%run_id, "lease lost; the run is left to its new holder");
                heartbeat.abort();
                flusher.abort();
                self.instance.release(&run_id);
                drop(permit);
                return;
            }
            (Stop::Shutdown, _) => {
                heartbeat.abort();
                flusher.abort();
                self.give_back(&execution).await;
                self.instance.release(&run_id);
                drop(permit);
                return;
            }
            (Stop::Cancel(reason), _) => (RunState::Cancelled, format!("cancelled: {reason}")),
            (Stop::RunTimeout, _) => (
                RunState::TimedOut,
                format!("the run's timeout of {}s passed", timeout.as_secs()),
            ),
            (Stop::No, Some(error)) => (RunState::Failed, error),
            (Stop::No, None) => (RunState::Succeeded, String::new()),
        };
        flusher.abort();
        if execution.log.finish() {
            self.truncated_logs.inc();
        }
        // The run's error names steps' errors, which may quote what a step printed.
        let error = execution.log.mask(&error);
        self.complete(&execution, state, error).await;
        heartbeat.abort();
        self.instance.release(&run_id);
        drop(permit);
    }

    fn spawn_heartbeat(
        &self,
        run_id: String,
        token: String,
        every: Duration,
    ) -> tokio::task::JoinHandle<()> {
        let clients = self.clients.clone();
        let instance = self.instance.clone();
        tokio::spawn(
            async move {
                loop {
                    tokio::time::sleep(every).await;
                    let beat = clients
                        .jobs()
                        .heartbeat_run(HeartbeatRunRequest {
                            run_id: run_id.clone(),
                            lease_token: token.clone(),
                        })
                        .await;
                    match beat {
                        Ok(beat) => {
                            let beat = beat.into_inner();
                            instance
                                .update(&run_id, |a| a.lease_expire_time = beat.lease_expire_time);
                            if beat.cancel_requested {
                                instance.stop(&run_id, Stop::Cancel(beat.cancel_reason));
                            }
                        }
                        Err(status) if lease_gone(&status) => {
                            instance.stop(&run_id, Stop::LeaseLost);
                            return;
                        }
                        Err(status) => {
                            tracing::warn!(%run_id, %status, "heartbeat failed; trying again")
                        }
                    }
                }
            }
            .in_current_span(),
        )
    }

    /// Flushes the log (a few tries), then completes the run (retrying while the jobs service
    /// is unreachable: the lease lets the reaper decide if it never comes back).
    async fn complete(&self, execution: &Execution, state: RunState, error: String) {
        let run_id = &execution.run.id;
        for _ in 0..20 {
            match execution
                .log
                .flush(&self.clients, run_id, &execution.token)
                .await
            {
                Ok(()) => break,
                Err(status) if lease_gone(&status) => return,
                Err(_) => tokio::time::sleep(Duration::from_millis(250)).await,
            }
        }
        let mut delay = Duration::from_millis(100);
        for _ in 0..30 {
            let done = self
                .clients
                .jobs()
                .complete_run(CompleteRunRequest {
                    run_id: run_id.clone(),
                    lease_token: execution.token.clone(),
                    state: state as i32,
                    error: error.clone(),
                })
                .await;
            match done {
                Ok(_) => {
                    tracing::info!(%run_id, state = state.as_str_name(), "run completed");
                    return;
                }
                Err(status) if lease_gone(&status) || status.code() == Code::InvalidArgument => {
                    tracing::warn!(%run_id, %status, "the run could not be completed");
                    return;
                }
                Err(status) => {
                    tracing::warn!(%run_id, %status, "completing the run failed; trying again");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(5));
                }
            }
        }
    }

    /// Shutting down past the grace period: the log so far, then the run back to the jobs
    /// service so another executor takes it at once.
    async fn give_back(&self, execution: &Execution) {
        let run_id = &execution.run.id;
        execution.log.system(
            &Origin::default(),
            format!(
                "executor {} is shutting down; run given back",
                self.instance.id
            ),
        );
        let _ = execution
            .log
            .flush(&self.clients, run_id, &execution.token)
            .await;
        let released = self
            .clients
            .jobs()
            .release_run(ReleaseRunRequest {
                run_id: run_id.clone(),
                lease_token: execution.token.clone(),
                reason: "executor shutting down".into(),
            })
            .await;
        match released {
            Ok(_) => tracing::info!(%run_id, "run given back on shutdown"),
            Err(status) => {
                tracing::warn!(%run_id, %status, "giving the run back failed; the reaper will take it")
            }
        }
    }

    /// Runs the steps in order; returns why the run failed, if it did.
    async fn steps(&self, execution: &mut Execution) -> Option<String> {
        let mut failed: Option<String> = None;
        let job = execution.job.clone();
        for (index, step) in job.steps.iter().enumerate() {
            if *execution.stop.borrow() != Stop::No {
                break;
            }
            let selects = |s: &Option<opsconductor_api::jobs::v1::TargetSelector>| {
                s.as_ref()
                    .is_some_and(|s| !s.names.is_empty() || !s.tags.is_empty())
            };
            let slots: Vec<Option<RunTarget>> = if selects(&step.targets) || selects(&job.targets) {
                execution
                    .run
                    .targets
                    .iter()
                    .filter(|t| t.steps.contains(&(index as u32)))
                    .cloned()
                    .map(Some)
                    .collect()
            } else {
                vec![None]
            };
            self.instance
                .update(&execution.run.id, |a| a.current_step = step.name.clone());
            if failed.is_some() {
                for slot in &slots {
                    self.report(
                        execution,
                        step_result(step, index, slot.as_ref(), 1, StepState::Skipped),
                    )
                    .await;
                }
                continue;
            }
            if slots.is_empty() {
                execution
                    .log
                    .system(&origin(step, None, 1), "no target selected: step skipped");
                continue;
            }
            let failures = self.fan_out(execution, &job, step, index, &slots).await;
            if !failures.is_empty() && !step.continue_on_error {
                failed = Some(format!(
                    "step {:?} failed on {}",
                    step.name,
                    failures.join(", ")
                ));
            }
        }
        failed
    }

    /// Runs a step on its targets, at most `max_parallel_targets` at once; once more than
    /// `max_failed_targets` failed, the targets not started yet are skipped. Returns the names
    /// of the targets it failed on.
    async fn fan_out(
        &self,
        execution: &Execution,
        job: &Job,
        step: &Step,
        index: usize,
        slots: &[Option<RunTarget>],
    ) -> Vec<String> {
        use futures::StreamExt;
        let parallel = match job.max_parallel_targets {
            0 => slots.len().max(1),
            n => n as usize,
        };
        let failed = std::sync::atomic::AtomicU32::new(0);
        let failed = &failed;
        let mut attempts = Vec::with_capacity(slots.len());
        for slot in slots {
            attempts.push(self.one_target(execution, job, step, index, slot.as_ref(), failed));
        }
        let outcomes: Vec<(String, bool)> = futures::stream::iter(attempts)
            .buffer_unordered(parallel)
            .collect()
            .await;
        let mut failures: Vec<String> = outcomes
            .into_iter()
            .filter(|(_, ok)| !ok)
            .map(|(n, _)| n)
            .collect();
        let skipped = job
            .max_failed_targets
            .is_some_and(|max| failed.load(std::sync::atomic::Ordering::SeqCst) > max);
        if skipped && failures.is_empty() {
            failures.push("too many targets".into());
        }
        failures.sort();
        failures
    }

    /// One target's share of [`Runner::fan_out`]: skipped when too many failed already.
    async fn one_target(
        &self,
        execution: &Execution,
        job: &Job,
        step: &Step,
        index: usize,
        slot: Option<&RunTarget>,
        failed: &std::sync::atomic::AtomicU32,
    ) -> (String, bool) {
        let name = slot
            .map(|t| t.name.clone())
            .unwrap_or_else(|| "the executor".into());
        let over = job
            .max_failed_targets
            .is_some_and(|max| failed.load(std::sync::atomic::Ordering::SeqCst) > max);
        if over {
            execution.log.system(
                &origin(step, slot, 1),
                "skipped: more targets failed this step than the job tolerates",
            );
            self.report(
                execution,
                step_result(step, index, slot, 1, StepState::Skipped),
            )
            .await;
            return (name, true);
        }
        let span = tracing::info_span!(
            "step",
            otel.name = %format!("step {}", step.name),
            step = %step.name,
            index,
            target = %name,
        );
        let ok = self
            .step_on(execution, step, index, slot)
            .instrument(span)
            .await;
        if !ok {
            failed.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        }
        (name, ok)
    }

    /// One step on one target (or none), with its retries; true when it succeeded.
    async fn step_on(
        &self,
        execution: &Execution,
        step: &Step,
        index: usize,
        target: Option<&RunTarget>,
    ) -> bool {
        let attempts = step.retries.min(10) + 1;
        let delay = step
            .retry_delay
            .as_ref()
            .and_then(to_std_duration)
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_RETRY_DELAY);
        let mut stop = execution.stop.clone();
        for attempt in 1..=attempts {
            let origin = origin(step, target, attempt);
            let mut result = step_result(step, index, target, attempt, StepState::Running);
            result.start_time = Some(to_timestamp(now_micros()));
            self.report(execution, result.clone()).await;
            let ended = self
                .attempt(execution, step, target, &origin, &mut stop)
                .await;
            result.end_time = Some(to_timestamp(now_micros()));
            let output = execution.log.take_output(&origin);
            if ended.state == StepState::Succeeded {
                let key = (step.name.clone(), origin.target_id.clone());
                let mut outputs = execution.outputs.lock().unwrap_or_else(|p| p.into_inner());
                outputs.insert(key, output);
            }
            result.state = ended.state as i32;
            result.exit_code = ended.exit_code;
            result.http_status = ended.http_status;
            // An error may quote the step's text (an http step's URL, a command's words).
            result.error = execution.log.mask(&ended.error);
            if !result.error.is_empty() {
                execution.log.system(&origin, result.error.clone());
            }
            self.report(execution, result).await;
            match ended.state {
                StepState::Succeeded => return true,
                StepState::Cancelled => return false,
                _ if attempt < attempts => {
                    execution.log.system(
                        &origin,
                        format!(
                            "attempt {attempt} of {attempts} failed; retrying in {}s",
                            delay.as_secs_f32()
                        ),
                    );
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shell::stopped(&mut stop) => return false,
                    }
                }
                _ => return false,
            }
        }
        false
    }

    async fn attempt(
        &self,
        execution: &Execution,
        step: &Step,
        target: Option<&RunTarget>,
        origin: &Origin,
        stop: &mut watch::Receiver<Stop>,
    ) -> Ended {
        let timeout = step
            .timeout
            .as_ref()
            .and_then(to_std_duration)
            .filter(|d| !d.is_zero())
            .unwrap_or(DEFAULT_STEP_TIMEOUT);
        let outputs = OutputsOn {
            outputs: &execution.outputs,
            target_id: target.map(|t| t.id.as_str()).unwrap_or_default(),
        };
        let values = Values {
            params: Some(&execution.parameters),
            steps: Some(&outputs),
            target: target.map(|t| TargetValues {
                id: &t.id,
                name: &t.name,
                address: &t.address,
                port: t.port,
            }),
            run_id: &execution.run.id,
            run_attempt: execution.run.attempt,
            job_name: &execution.job.name,
        };
        let render = |source: &str, context: Context| -> Result<String, String> {
            Template::parse(source)
                .map_err(|e| format!("template error {e}"))?
                .render(&values, context)
                .map_err(|e| e.to_string())
        };
        let parse = |source: &str| -> Result<Template, String> {
            Template::parse(source).map_err(|e| format!("template error {e}"))
        };
        let render_shell = |source: &str| -> Result<ShellScript, String> {
            Template::parse(source)
                .map_err(|e| format!("template error {e}"))?
                .render_shell(&values)
                .map_err(|e| e.to_string())
        };
        match &step.action {
            Some(step::Action::Shell(shell)) => {
                // The values go in the environment; the script only refers to them.
                let rendered = match render_shell(&shell.command) {
                    Ok(s) => s,
                    Err(e) => return Ended::failed(e),
                };
                let mut env = self.ops_env(execution, step, target);
                for (name, value) in &shell.env {
                    match render(value, Context::Text) {
                        Ok(v) => env.push((name.clone(), v)),
                        Err(e) => return Ended::failed(e),
                    }
                }
                env.extend(rendered.vars);
                let command = ShellCommand {
                    script: &rendered.script,
                    env,
                    timeout,
                    contain: &self.contain,
                };
                match shell::run(command, &execution.log, origin, stop).await {
                    Ok(Exit::Code(0)) => Ended::ok(Some(0), None),
                    Ok(Exit::Code(code)) => Ended {
                        exit_code: Some(code),
                        ..Ended::failed(format!("exited with {code}"))
                    },
                    Ok(Exit::Signal(signal)) => Ended::failed(format!("killed by signal {signal}")),
                    Ok(Exit::TimedOut) => Ended::timed_out(timeout),
                    Ok(Exit::Stopped(why)) => Ended::stopped(why),
                    Err(e) => Ended::failed(e),
                }
            }
            Some(step::Action::Http(h)) => {
                // Jobs saved before the URL rule was checked are held to it here too.
                let url = match parse(&h.url).and_then(|t| {
                    t.check_url().map_err(|e| e.to_string())?;
                    t.render_url(&values).map_err(|e| e.to_string())
                }) {
                    Ok(u) => u,
                    Err(e) => return Ended::failed(e),
                };
                let mut headers = Vec::new();
                for (name, value) in &h.headers {
                    match render(value, Context::Text) {
                        Ok(v) => headers.push((name.clone(), v)),
                        Err(e) => return Ended::failed(e),
                    }
                }
                let content_type = h
                    .headers
                    .iter()
                    .find(|(name, _)| name.eq_ignore_ascii_case("content-type"))
                    .map_or("", |(_, value)| value.as_str());
                let body = match parse(&h.body).and_then(|t| {
                    t.render_body(&values, t.body_kind(content_type))
                        .map_err(|e| e.to_string())
                }) {
                    Ok(b) => b,
                    Err(e) => return Ended::failed(e),
                };
                let request = HttpRequest {
                    method: h.method.clone(),
                    url,
                    headers,
                    body,
                    expected: h.expected_status_codes.clone(),
                    timeout,
                };
                match http::run(&self.http, request, &execution.log, origin, stop).await {
                    http::Outcome::Response { status, ok: true } => {
                        Ended::ok(None, Some(u32::from(status)))
                    }
                    http::Outcome::Response { status, ok: false } => Ended {
                        http_status: Some(u32::from(status)),
                        ..Ended::failed(format!(
                            "answered {status}, which the step does not expect"
                        ))
                    },
                    http::Outcome::Failed(e) => Ended::failed(e),
                    http::Outcome::TimedOut => Ended::timed_out(timeout),
                    http::Outcome::Stopped(why) => Ended::stopped(why),
                }
            }
            Some(step::Action::Ssh(ssh)) => {
                let Some(target) = target else {
                    return Ended::failed("an ssh step needs a target".into());
                };
                // The values travel as assignments the wrapper writes, never in the command.
                let rendered = match render_shell(&ssh.command) {
                    Ok(c) => c,
                    Err(e) => return Ended::failed(e),
                };
                let access = match self.ssh_access(execution, step, ssh, target, origin).await {
                    Ok(access) => access,
                    Err(e) => return Ended::failed(e),
                };
                let command = crate::ssh::SshCommand {
                    address: &target.address,
                    port: access.port,
                    fingerprint: &access.fingerprint,
                    username: &access.username,
                    login: access.login,
                    command: &rendered.script,
                    vars: &rendered.vars,
                    timeout,
                };
                match crate::ssh::run(command, &execution.log, origin, stop).await {
                    Ok(crate::ssh::Exit::Code(0)) => Ended::ok(Some(0), None),
                    Ok(crate::ssh::Exit::Code(code)) => {
                        let code = i32::try_from(code).unwrap_or(i32::MAX);
                        Ended {
                            exit_code: Some(code),
                            ..Ended::failed(format!("exited with {code}"))
                        }
                    }
                    Ok(crate::ssh::Exit::Signal(signal)) => {
                        Ended::failed(format!("killed by signal {signal}"))
                    }
                    Ok(crate::ssh::Exit::Vanished) => {
                        Ended::failed("the session ended without an exit status".into())
                    }
                    Ok(crate::ssh::Exit::TimedOut) => Ended::timed_out(timeout),
                    Ok(crate::ssh::Exit::Stopped(why)) => Ended::stopped(why),
                    Err(e) => Ended::failed(e),
                }
            }
            None => Ended::failed("the step has no action".into()),
        }
    }

    /// Replaces each SECRET parameter's credential id with the secret, revealed for this run
    /// and masked in its log from now on.
    async fn reveal_secret_parameters(&self, execution: &mut Execution) -> Result<(), String> {
        let secret: Vec<String> = execution
            .job
            .parameters
            .iter()
            .filter(|p| p.r#type == ParameterType::Secret as i32)
            .map(|p| p.name.clone())
            .collect();
        for name in secret {
            let Some(credential_id) = execution
                .parameters
                .get(&name)
                .filter(|v| !v.is_empty())
                .cloned()
            else {
                continue;
            };
            let revealed = self
                .clients
                .credentials()
                .reveal_credential(RevealCredentialRequest {
                    id: credential_id,
                    reason: format!("secret parameter {name:?} of run {}", execution.run.id),
                    idempotency_key: format!(
                        "{}/{}/param/{name}",
                        execution.run.id, execution.run.attempt
                    )
                    .chars()
                    .take(128)
                    .collect(),
                    run_id: execution.run.id.clone(),
                    target_id: String::new(),
                    executor_id: self.instance.id.clone(),
                    secret_version: 0,
                    lease_token: execution.token.clone(),
                })
                .await
                .map_err(|s| {
                    format!(
                        "the secret parameter {name:?} could not be revealed: {}",
                        s.message()
                    )
                })?
                .into_inner();
            let value = match revealed.secret.and_then(|s| s.material) {
                Some(Material::Password(p)) => p.password,
                Some(Material::ApiToken(t)) => t.token,
                Some(Material::SshKey(k)) => k.private_key,
                Some(Material::Certificate(c)) => c.private_key_pem,
                None => return Err(format!("the secret parameter {name:?} revealed nothing")),
            };
            // Its encodings and, for a key or certificate, each of its lines too (Masker).
            execution.log.add_secret(&value);
            execution.parameters.insert(name, value);
        }
        Ok(())
    }

    /// Where and as whom an ssh step logs in: the target's pinned host key, the credential the
    /// step names or the target's SSH credential, revealed for this run and target (and masked
    /// in the log from then on).
    async fn ssh_access(
        &self,
        execution: &Execution,
        step: &Step,
        ssh: &opsconductor_api::jobs::v1::SshStep,
        target: &RunTarget,
        origin: &Origin,
    ) -> Result<SshAccess, String> {
        let current = self
            .clients
            .targets()
            .get_target(GetTargetRequest {
                id: target.id.clone(),
            })
            .await
            .map_err(|s| format!("the target could not be read: {}", s.message()))?
            .into_inner()
            .target
            .ok_or("the targets service sent no target")?;
        if current.ssh_host_key_fingerprint.is_empty() {
            return Err(format!(
                "target {} has no ssh_host_key_fingerprint: pin its host key before running ssh steps on it",
                target.name
            ));
        }
        let credential_id = if ssh.credential_id.is_empty() {
            current
                .credential_refs
                .iter()
                .find(|r| r.protocol == Protocol::Ssh as i32)
                .map(|r| r.credential_id.clone())
                .ok_or_else(|| format!("target {} has no SSH credential", target.name))?
        } else {
            ssh.credential_id.clone()
        };
        let key = format!(
            "{}/{}/{}/{}/{}",
            execution.run.id, execution.run.attempt, step.name, target.id, origin.attempt
        );
        let revealed = self
            .clients
            .credentials()
            .reveal_credential(RevealCredentialRequest {
                id: credential_id,
                reason: format!("ssh step {:?} of run {}", step.name, execution.run.id),
                idempotency_key: key.chars().take(128).collect(),
                run_id: execution.run.id.clone(),
                target_id: target.id.clone(),
                executor_id: self.instance.id.clone(),
                secret_version: 0,
                lease_token: execution.token.clone(),
            })
            .await
            .map_err(|s| format!("the credential could not be revealed: {}", s.message()))?
            .into_inner();
        let username = revealed.credential.map(|c| c.username).unwrap_or_default();
        if username.is_empty() {
            return Err("the SSH credential has no username".into());
        }
        let login = match revealed.secret.and_then(|s| s.material) {
            Some(Material::Password(p)) => {
                execution.log.add_secret(&p.password);
                crate::ssh::Login::Password(zeroize::Zeroizing::new(p.password))
            }
            Some(Material::SshKey(k)) => {
                execution.log.add_secret(&k.passphrase);
                execution.log.add_secret(&k.private_key);
                let private_key = zeroize::Zeroizing::new(k.private_key);
                let passphrase = zeroize::Zeroizing::new(k.passphrase);
                crate::ssh::key_login(&private_key, &passphrase)?
            }
            _ => return Err("the credential is neither a password nor an SSH key".into()),
        };
        Ok(SshAccess {
            port: u16::try_from(target.port)
                .ok()
                .filter(|p| *p > 0)
                .unwrap_or(22),
            fingerprint: current.ssh_host_key_fingerprint,
            username,
            login,
        })
    }

    /// What every shell step gets: the run, the step, the target and each non-secret
    /// parameter as `OPS_PARAM_<NAME>`.
    fn ops_env(
        &self,
        execution: &Execution,
        step: &Step,
        target: Option<&RunTarget>,
    ) -> Vec<(String, String)> {
        let mut env = vec![
            ("OPS_RUN_ID".to_string(), execution.run.id.clone()),
            (
                "OPS_RUN_ATTEMPT".to_string(),
                execution.run.attempt.to_string(),
            ),
            ("OPS_JOB_NAME".to_string(), execution.job.name.clone()),
            ("OPS_STEP_NAME".to_string(), step.name.clone()),
        ];
        if let Some(t) = target {
            env.push(("OPS_TARGET_ID".into(), t.id.clone()));
            env.push(("OPS_TARGET_NAME".into(), t.name.clone()));
            env.push(("OPS_TARGET_ADDRESS".into(), t.address.clone()));
            env.push(("OPS_TARGET_PORT".into(), t.port.to_string()));
        }
        // SECRET parameters hold their revealed secret by now (masked in the log).
        for spec in &execution.job.parameters {
            if let Some(value) = execution.parameters.get(&spec.name) {
                env.push((
                    format!("OPS_PARAM_{}", spec.name.to_ascii_uppercase()),
                    value.clone(),
                ));
            }
        }
        env
    }

    async fn report(&self, execution: &Execution, step: RunStep) {
        let mut delay = Duration::from_millis(100);
        for _ in 0..10 {
            let sent = self
                .clients
                .jobs()
                .report_step_result(ReportStepResultRequest {
                    run_id: execution.run.id.clone(),
                    lease_token: execution.token.clone(),
                    step: Some(step.clone()),
                })
                .await;
            match sent {
                Ok(answer) => {
                    if answer.into_inner().cancel_requested {
                        self.instance
                            .stop(&execution.run.id, Stop::Cancel(String::new()));
                    }
                    return;
                }
                Err(status) if lease_gone(&status) => {
                    self.instance.stop(&execution.run.id, Stop::LeaseLost);
                    return;
                }
                Err(status) => {
                    tracing::warn!(run_id = %execution.run.id, %status, "reporting a step failed; trying again");
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }
}

/// How an ssh step reaches its target.
struct SshAccess {
    port: u16,
    fingerprint: String,
    username: String,
    login: crate::ssh::Login,
}

/// How one attempt ended.
struct Ended {
    state: StepState,
    exit_code: Option<i32>,
    http_status: Option<u32>,
    error: String,
}

impl Ended {
    fn ok(exit_code: Option<i32>, http_status: Option<u32>) -> Ended {
        Ended {
            state: StepState::Succeeded,
            exit_code,
            http_status,
            error: String::new(),
        }
    }

    fn failed(error: String) -> Ended {
        Ended {
            state: StepState::Failed,
            exit_code: None,
            http_status: None,
            error,
        }
    }

    fn timed_out(timeout: Duration) -> Ended {
        Ended {
            state: StepState::TimedOut,
            ..Ended::failed(format!(
                "the step's timeout of {}s passed",
                timeout.as_secs_f32()
            ))
        }
    }

    fn stopped(why: Stop) -> Ended {
        let error = match why {
            Stop::Cancel(reason) if reason.is_empty() => "cancelled".to_string(),
            Stop::Cancel(reason) => format!("cancelled: {reason}"),
            Stop::RunTimeout => "the run's timeout passed".into(),
            Stop::Shutdown => "the executor is shutting down".into(),
            Stop::LeaseLost | Stop::No => "the run's lease was lost".into(),
        };
        Ended {
            state: StepState::Cancelled,
            ..Ended::failed(error)
        }
    }
}

fn origin(step: &Step, target: Option<&RunTarget>, attempt: u32) -> Origin {
    Origin {
        step_name: step.name.clone(),
        target_id: target.map(|t| t.id.clone()).unwrap_or_default(),
        attempt,
    }
}

fn step_result(
    step: &Step,
    index: usize,
    target: Option<&RunTarget>,
    attempt: u32,
    state: StepState,
) -> RunStep {
    RunStep {
        step_name: step.name.clone(),
        step_index: index as u32,
        target_id: target.map(|t| t.id.clone()).unwrap_or_default(),
        target_name: target.map(|t| t.name.clone()).unwrap_or_default(),
        attempt,
        state: state as i32,
        ..RunStep::default()
    }
}
