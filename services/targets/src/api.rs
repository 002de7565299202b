//! The generated `TargetsService` trait, implemented over [`TargetStore`]. Each trait method
//! only unwraps the request and wraps the answer; the inherent method of the same name does
//! the work.

use opsconductor_api::targets::v1::targets_service_server::TargetsService;
use opsconductor_api::targets::v1::*;
use opsconductor_messaging::Cause;
use opsconductor_platform::page::Page;
use opsconductor_platform::time::to_std_duration;
use opsconductor_platform::validate::{require_id, required, Violations};
use tonic::{Request, Response, Status};

use crate::connectivity::{self, DEFAULT_TIMEOUT, MAX_TIMEOUT};
use crate::store::{TargetFilter, TargetStore};
use crate::{validate, TargetsError};

type Result<T> = std::result::Result<T, TargetsError>;

const MUTABLE_FIELDS: [&str; 9] = [
    "name",
    "address",
    "port",
    "os",
    "tags",
    "labels",
    "credential_refs",
    "description",
    "ssh_host_key_fingerprint",
];

pub struct TargetsApi {
    store: TargetStore,
}

impl TargetsApi {
    pub fn new(store: TargetStore) -> Self {
        TargetsApi { store }
    }

    async fn create(&self, req: CreateTargetRequest, cause: &Cause) -> Result<Target> {
        let target = required("target", req.target)?;
        let mut v = Violations::new();
        validate::target(&mut v, &target);
        v.finish()?;
        let target = self.store.create(&target, cause).await?;
        tracing::info!(target_id = %target.id, name = %target.name, "target created");
        Ok(target)
    }

    async fn get(&self, req: GetTargetRequest) -> Result<Target> {
        require_id("id", &req.id)?;
        self.store.get(&req.id).await
    }

    async fn list(&self, req: ListTargetsRequest) -> Result<ListTargetsResponse> {
        let mut v = Violations::new();
        let page = Page::parse(req.page_size, &req.page_token, &mut v);
        v.check(
            req.tags.len() <= validate::MAX_TAGS,
            "tags",
            format!("at most {} tags", validate::MAX_TAGS),
        );
        for (i, tag) in req.tags.iter().enumerate() {
            validate::tag(&mut v, &format!("tags[{i}]"), tag);
        }
        v.check(req.names.len() <= 100, "names", "at most 100 names");
        for (i, name) in req.names.iter().enumerate() {
            validate::name(&mut v, &format!("names[{i}]"), name);
        }
        if !req.credential_id.is_empty() {
            v.id("credential_id", &req.credential_id);
        }
        let os = match OperatingSystem::try_from(req.os) {
            Ok(OperatingSystem::Unspecified) => None,
            Ok(os) => Some(os as i32),
            Err(_) => {
                v.add("os", format!("{} is not an operating system", req.os));
                None
            }
        };
        v.finish()?;
        let mut tags = req.tags;
        tags.sort();
        tags.dedup();
        let filter = TargetFilter {
            tags,
            os,
            names: req.names,
            credential_id: (!req.credential_id.is_empty()).then_some(req.credential_id),
        };
        let (targets, next_page_token) = self.store.list(&filter, &page).await?;
        Ok(ListTargetsResponse {
            targets,
            next_page_token,
        })
    }

    async fn update(&self, req: UpdateTargetRequest, cause: &Cause) -> Result<Target> {
        let patch = required("target", req.target)?;
        let mut v = Violations::new();
        v.id("target.id", &patch.id);
        let paths = v.update_mask(req.update_mask, &MUTABLE_FIELDS);
        v.finish()?;
        let (mut target, version) = self.store.versioned(&patch.id).await?;
        for path in &paths {
            match path.as_str() {
                "name" => target.name = patch.name.clone(),
                "address" => target.address = patch.address.clone(),
                "port" => target.port = patch.port,
                "os" => target.os = patch.os,
                "tags" => target.tags = patch.tags.clone(),
                "labels" => target.labels = patch.labels.clone(),
                "credential_refs" => target.credential_refs = patch.credential_refs.clone(),
                "description" => target.description = patch.description.clone(),
                "ssh_host_key_fingerprint" => {
                    target.ssh_host_key_fingerprint = patch.ssh_host_key_fingerprint.clone()
                }
                _ => {}
            }
        }
        let mut v = Violations::new();
        validate::target(&mut v, &target);
        v.finish()?;
        let target = self.store.update(&target, version, &paths, cause).await?;
        tracing::info!(target_id = %target.id, "target updated");
        Ok(target)
    }

    async fn delete(&self, req: DeleteTargetRequest, cause: &Cause) -> Result<()> {
        require_id("id", &req.id)?;
        self.store.delete(&req.id, cause).await?;
        tracing::info!(target_id = %req.id, "target deleted");
        Ok(())
    }

    async fn test_connectivity(
        &self,
        req: TestTargetConnectivityRequest,
    ) -> Result<TestTargetConnectivityResponse> {
        let mut v = Violations::new();
        v.id("id", &req.id);
        v.check(req.port <= 65535, "port", "must be between 1 and 65535");
        let timeout = match &req.timeout {
            None => DEFAULT_TIMEOUT,
            Some(d) => match to_std_duration(d) {
                Some(t) if !t.is_zero() && t <= MAX_TIMEOUT => t,
                _ => {
                    v.add("timeout", "must be more than 0s and at most 60s");
                    DEFAULT_TIMEOUT
                }
            },
        };
        v.finish()?;
        let target = self.store.get(&req.id).await?;
        let port = if req.port == 0 { target.port } else { req.port };
        let result = connectivity::probe(&target.address, port as u16, timeout).await;
        tracing::info!(
            target_id = %target.id,
            reachable = result.reachable,
            "connectivity tested"
        );
        Ok(result)
    }
}

#[tonic::async_trait]
impl TargetsService for TargetsApi {
    async fn create_target(
        &self,
        request: Request<CreateTargetRequest>,
    ) -> std::result::Result<Response<CreateTargetResponse>, Status> {
        let cause = Cause::from_request(&request);
        let target = self.create(request.into_inner(), &cause).await?;
        Ok(Response::new(CreateTargetResponse {
            target: Some(target),
        }))
    }

    async fn get_target(
        &self,
        request: Request<GetTargetRequest>,
    ) -> std::result::Result<Response<GetTargetResponse>, Status> {
        let target = self.get(request.into_inner()).await?;
        Ok(Response::new(GetTargetResponse {
            target: Some(target),
        }))
    }

    async fn list_targets(
        &self,
        request: Request<ListTargetsRequest>,
    ) -> std::result::Result<Response<ListTargetsResponse>, Status> {
        Ok(Response::new(self.list(request.into_inner()).await?))
    }

    async fn update_target(
        &self,
        request: Request<UpdateTargetRequest>,
    ) -> std::result::Result<Response<UpdateTargetResponse>, Status> {
        let cause = Cause::from_request(&request);
        let target = self.update(request.into_inner(), &cause).await?;
        Ok(Response::new(UpdateTargetResponse {
            target: Some(target),
        }))
    }

    async fn delete_target(
        &self,
        request: Request<DeleteTargetRequest>,
    ) -> std::result::Result<Response<DeleteTargetResponse>, Status> {
        let cause = Cause::from_request(&request);
        self.delete(request.into_inner(), &cause).await?;
        Ok(Response::new(DeleteTargetResponse {}))
    }

    async fn test_target_connectivity(
        &self,
        request: Request<TestTargetConnectivityRequest>,
    ) -> std::result::Result<Response<TestTargetConnectivityResponse>, Status> {
        Ok(Response::new(
            self.test_connectivity(request.into_inner()).await?,
        ))
    }
}
