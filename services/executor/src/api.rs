//! The executor's own service: its status, the runs it holds, and draining.

use std::sync::Arc;

use opsconductor_api::executor::v1::executor_service_server::ExecutorService;
use opsconductor_api::executor::v1::*;
use opsconductor_messaging::Broker;
use opsconductor_platform::time::to_timestamp;
use opsconductor_platform::validate::Violations;
use tonic::{Request, Response, Status};

use crate::instance::Instance;

pub struct ExecutorApi {
    pub instance: Arc<Instance>,
    pub broker: Broker,
}

#[tonic::async_trait]
impl ExecutorService for ExecutorApi {
    async fn get_executor_status(
        &self,
        _request: Request<GetExecutorStatusRequest>,
    ) -> Result<Response<GetExecutorStatusResponse>, Status> {
        let i = &self.instance;
        Ok(Response::new(GetExecutorStatusResponse {
            executor_id: i.id.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            capacity: i.capacity,
            active_run_count: i.active_count() as u32,
            broker_connected: self.broker.is_connected(),
            draining: i.draining(),
            start_time: Some(to_timestamp(i.start_time)),
        }))
    }

    async fn list_active_runs(
        &self,
        request: Request<ListActiveRunsRequest>,
    ) -> Result<Response<ListActiveRunsResponse>, Status> {
        let req = request.into_inner();
        let mut v = Violations::new();
        let size = match req.page_size {
            0 => 50,
            n if n < 0 => {
                v.add("page_size", "must not be negative");
                50
            }
            n => n.min(500) as usize,
        };
        // The token is the last run id of the previous page (runs come oldest claim first,
        // and ids are UUIDv7, so later claims of runs started earlier may be skipped: the list
        // is a view of a moving set).
        if !req.page_token.is_empty() {
            v.id("page_token", &req.page_token);
        }
        v.finish().map_err(Status::from)?;
        let runs = self.instance.active();
        let start = match req.page_token.as_str() {
            "" => 0,
            after => runs
                .iter()
                .position(|r| r.run_id == after)
                .map(|p| p + 1)
                .unwrap_or(runs.len()),
        };
        let page: Vec<ActiveRun> = runs.iter().skip(start).take(size).cloned().collect();
        let next_page_token = if start + page.len() < runs.len() {
            page.last().map(|r| r.run_id.clone()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(ListActiveRunsResponse {
            active_runs: page,
            next_page_token,
        }))
    }

    async fn drain_executor(
        &self,
        request: Request<DrainExecutorRequest>,
    ) -> Result<Response<DrainExecutorResponse>, Status> {
        let resume = request.into_inner().resume;
        self.instance.set_draining(!resume);
        tracing::info!(executor_id = %self.instance.id, draining = !resume, "drain changed");
        Ok(Response::new(DrainExecutorResponse {
            draining: self.instance.draining(),
            active_run_count: self.instance.active_count() as u32,
        }))
    }
}
