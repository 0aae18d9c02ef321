//! The `ipam.v1.IpamService` implementation: find the caller's tenant's driver, parse, call
//! the driver, convert back. One span per RPC, named after it, with the pool id and address as
//! fields, and one audit line per mutation.

use std::sync::Arc;

use tonic::{Request, Response, Status};
use tracing::{Span, field};

use super::audit;
use super::quota::{Counted, Quotas};
use super::retry;
use super::status::status;
use crate::auth::{Authenticator, Caller};
use crate::engine;
use crate::ipam::{self, Ipam, Tenants};
use crate::proto::{self, pb};

/// The gRPC service, over every tenant's driver.
#[derive(Clone)]
pub struct IpamApi {
    tenants: Arc<Tenants>,
    auth: Arc<Authenticator>,
    quotas: Arc<Quotas>,
}

impl IpamApi {
    /// Serves the tenants of `tenants`, holding them to the quotas `auth` reads.
    pub fn new(tenants: Arc<Tenants>, auth: Arc<Authenticator>) -> Self {
        Self {
            tenants,
            auth,
            quotas: Arc::default(),
        }
    }

    /// Audits each address taken back (or the failure).
    fn audit_taken(
        &self,
        caller: &Caller,
        rpc: &str,
        result: &Result<Vec<super::reclaim::Taken>, Status>,
    ) {
        match result {
            Ok(taken) => {
                for (id, address, _) in taken {
                    audit::record(
                        caller,
                        rpc,
                        &id.to_string(),
                        &address.to_string(),
                        &Ok::<(), Status>(()),
                    );
                }
            }
            Err(_) => audit::record(caller, rpc, "", "", result),
        }
    }

    /// The caller (as the authentication layer found it) and its tenant's driver.
    async fn driver<T>(&self, request: &Request<T>) -> Result<(Caller, Arc<dyn Ipam>), Status> {
        let caller = super::caller(request)?;
        let ipam = self
            .tenants
            .driver(&caller.tenant)
            .await
            .map_err(|e| status(&e))?;
        Ok((caller, ipam))
    }
}

fn invalid_request(reason: &str) -> Status {
    status(&ipam::Error::Invalid(reason.to_owned()))
}

fn invalid(err: crate::engine::Error) -> Status {
    status(&ipam::Error::Engine(err))
}

/// One page of pools, and the token of the next page (empty after the last).
async fn pool_page(
    ipam: &dyn Ipam,
    space: Option<&str>,
    page: ipam::PoolPage,
) -> Result<(Vec<engine::PoolId>, String), Status> {
    let limit = page.limit;
    // One more than asked: whether another page follows.
    let more = ipam::PoolPage {
        limit: limit + 1,
        ..page
    };
    let mut ids = ipam
        .list_pools(space, &more)
        .await
        .map_err(|e| status(&e))?;
    if ids.len() <= limit {
        return Ok((ids, String::new()));
    }
    ids.truncate(limit);
    let next = ids.last().map(ToString::to_string).unwrap_or_default();
    Ok((ids, next))
}

#[tonic::async_trait]
impl pb::ipam_service_server::IpamService for IpamApi {
    #[tracing::instrument(name = "GetDefaultAddressSpaces", skip_all)]
    async fn get_default_address_spaces(
        &self,
        request: Request<pb::GetDefaultAddressSpacesRequest>,
    ) -> Result<Response<pb::GetDefaultAddressSpacesResponse>, Status> {
        let (_, ipam) = self.driver(&request).await?;
        let (local, global) = ipam.default_address_spaces();
        Ok(Response::new(pb::GetDefaultAddressSpacesResponse {
            local_default_address_space: local,
            global_default_address_space: global,
        }))
    }

    #[tracing::instrument(name = "GetCapabilities", skip_all)]
    async fn get_capabilities(
        &self,
        request: Request<pb::GetCapabilitiesRequest>,
    ) -> Result<Response<pb::GetCapabilitiesResponse>, Status> {
        let (_, ipam) = self.driver(&request).await?;
        let caps = ipam.capabilities();
        Ok(Response::new(pb::GetCapabilitiesResponse {
            requires_mac_address: caps.requires_mac_address,
            requires_request_replay: caps.requires_request_replay,
        }))
    }

    #[tracing::instrument(
        name = "RequestPool",
        skip_all,
        fields(address_space = %request.get_ref().address_space, pool = %request.get_ref().pool,
               sub_pool = %request.get_ref().sub_pool, pool_id = field::Empty)
    )]
    async fn request_pool(
        &self,
        request: Request<pb::RequestPoolRequest>,
    ) -> Result<Response<pb::RequestPoolResponse>, Status> {
        let (caller, ipam) = self.driver(&request).await?;
        let result = async {
            let r = request.get_ref();
            let (space, req) = proto::pool_request(r).map_err(invalid)?;
            let store = self.tenants.store().as_ref();
            let retry = (!r.request_id.is_empty())
                .then(|| (r.request_id.as_str(), retry::fingerprint(&space, r)));
            if let Some((request_id, asked)) = &retry {
                retry::check_id(request_id).map_err(|e| status(&e))?;
                let earlier =
                    retry::earlier(store, ipam.as_ref(), &caller.tenant, (request_id, asked));
                if let Some(id) = earlier.await.map_err(|e| status(&e))? {
                    return Ok(id);
                }
            }
            let _pending = self
                .quotas
                .admit(&self.auth, &caller, ipam.as_ref(), Counted::Pools)
                .await?;
            let made = ipam.request_pool(&space, &req).await;
            let id = match (made, &retry) {
                (Ok(id), None) => id,
                (Ok(id), Some((request_id, asked))) => retry::remember(
                    store,
                    ipam.as_ref(),
                    &caller.tenant,
                    (request_id, asked),
                    id,
                )
                .await
                .map_err(|e| status(&e))?,
                // The same id's create won the race for this exact pool: its pool, then.
                (Err(e), Some((request_id, asked))) if e.kind() == ipam::Kind::AlreadyExists => {
                    let earlier =
                        retry::earlier(store, ipam.as_ref(), &caller.tenant, (request_id, asked));
                    earlier
                        .await
                        .map_err(|e| status(&e))?
                        .ok_or_else(|| status(&e))?
                }
                (Err(e), _) => return Err(status(&e)),
            };
            Span::current().record("pool_id", field::display(&id));
            Ok(id)
        }
        .await;
        let pool = result
            .as_ref()
            .map_or_else(|_| String::new(), ToString::to_string);
        audit::record(&caller, "RequestPool", &pool, "", &result);
        let id = result?;
        Ok(Response::new(pb::RequestPoolResponse {
            pool_id: id.to_string(),
            pool: id.subnet().to_string(),
            data: Default::default(),
        }))
    }

    #[tracing::instrument(name = "ReleasePool", skip_all, fields(pool_id = %request.get_ref().pool_id))]
    async fn release_pool(
        &self,
        request: Request<pb::ReleasePoolRequest>,
    ) -> Result<Response<pb::ReleasePoolResponse>, Status> {
        let (caller, ipam) = self.driver(&request).await?;
        let r = request.get_ref();
        let result = async {
            let id = proto::pool_id(&r.pool_id).map_err(invalid)?;
            ipam.release_pool(&id).await.map_err(|e| status(&e))
        }
        .await;
        audit::record(&caller, "ReleasePool", &r.pool_id, "", &result);
        result?;
        Ok(Response::new(pb::ReleasePoolResponse {}))
    }

    #[tracing::instrument(name = "ListPools", skip_all, fields(address_space = %request.get_ref().address_space))]
    async fn list_pools(
        &self,
        request: Request<pb::ListPoolsRequest>,
    ) -> Result<Response<pb::ListPoolsResponse>, Status> {
        let (_, ipam) = self.driver(&request).await?;
        let r = request.get_ref();
        let space = (!r.address_space.is_empty()).then_some(r.address_space.as_str());
        let page = proto::pool_page(r.page_size, &r.page_token).map_err(invalid)?;
        let (ids, next_page_token) = pool_page(ipam.as_ref(), space, page).await?;
        Ok(Response::new(pb::ListPoolsResponse {
            pools: ids.iter().map(proto::pool).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(
        name = "RequestAddress",
        skip_all,
        fields(pool_id = %request.get_ref().pool_id, address = field::Empty)
    )]
    async fn request_address(
        &self,
        request: Request<pb::RequestAddressRequest>,
    ) -> Result<Response<pb::RequestAddressResponse>, Status> {
        let (caller, ipam) = self.driver(&request).await?;
        let r = request.get_ref();
        let result = async {
            let id = proto::pool_id(&r.pool_id).map_err(invalid)?;
            let mut req =
                engine::AddressRequest::parse(&id, &r.address, &r.options).map_err(invalid)?;
            req.owner = proto::owner(&r.owner).map_err(invalid)?;
            let _pending = self
                .quotas
                .admit(&self.auth, &caller, ipam.as_ref(), Counted::Addresses)
                .await?;
            let address = ipam
                .request_address(&id, &req)
                .await
                .map_err(|e| status(&e))?;
            Span::current().record("address", field::display(&address));
            Ok(address)
        }
        .await;
        let address = result
            .as_ref()
            .map_or_else(|_| r.address.clone(), ToString::to_string);
        audit::record(&caller, "RequestAddress", &r.pool_id, &address, &result);
        let address = result?;
        Ok(Response::new(pb::RequestAddressResponse {
            address: address.to_string(),
            data: Default::default(),
        }))
    }

    #[tracing::instrument(
        name = "ReleaseAddress",
        skip_all,
        fields(pool_id = %request.get_ref().pool_id, address = %request.get_ref().address)
    )]
    async fn release_address(
        &self,
        request: Request<pb::ReleaseAddressRequest>,
    ) -> Result<Response<pb::ReleaseAddressResponse>, Status> {
        let (caller, ipam) = self.driver(&request).await?;
        let r = request.get_ref();
        let result = async {
            let id = proto::pool_id(&r.pool_id).map_err(invalid)?;
            let address = engine::request::parse_address(&id, &r.address).map_err(invalid)?;
            let owner = proto::owner(&r.owner).map_err(invalid)?;
            ipam.release_address(&id, address, owner.as_ref())
                .await
                .map_err(|e| status(&e))
        }
        .await;
        audit::record(&caller, "ReleaseAddress", &r.pool_id, &r.address, &result);
        result?;
        Ok(Response::new(pb::ReleaseAddressResponse {}))
    }

    #[tracing::instrument(
        name = "ListAllocations",
        skip_all,
        fields(pool_id = %request.get_ref().pool_id)
    )]
    async fn list_allocations(
        &self,
        request: Request<pb::ListAllocationsRequest>,
    ) -> Result<Response<pb::ListAllocationsResponse>, Status> {
        let (_, ipam) = self.driver(&request).await?;
        let r = request.get_ref();
        let id = proto::pool_id(&r.pool_id).map_err(invalid)?;
        let page = proto::allocation_page(&id, r).map_err(invalid)?;
        let limit = page.limit;
        let mut found = ipam
            .list_allocations(
                &id,
                &ipam::AllocationPage {
                    // One more than asked: whether another page follows.
                    limit: limit + 1,
                    ..page
                },
            )
            .await
            .map_err(|e| status(&e))?;
        let next_page_token = if found.len() > limit {
            found.truncate(limit);
            found.last().map(|(a, _)| a.to_string()).unwrap_or_default()
        } else {
            String::new()
        };
        Ok(Response::new(pb::ListAllocationsResponse {
            allocations: found.iter().map(proto::allocation).collect(),
            next_page_token,
        }))
    }

    #[tracing::instrument(name = "ReleaseOwner", skip_all, fields(owner = %request.get_ref().owner))]
    async fn release_owner(
        &self,
        request: Request<pb::ReleaseOwnerRequest>,
    ) -> Result<Response<pb::ReleaseOwnerResponse>, Status> {
        let (caller, ipam) = self.driver(&request).await?;
        let r = request.get_ref();
        let owner = proto::owner(&r.owner)
            .map_err(invalid)?
            .ok_or_else(|| invalid_request("an owner is required"))?;
        let pools = proto::pool_ids(&r.pool_ids).map_err(invalid)?;
        let result = super::reclaim::release_owner(ipam.as_ref(), &owner, pools)
            .await
            .map_err(|e| status(&e));
        self.audit_taken(&caller, "ReleaseOwner", &result);
        Ok(Response::new(pb::ReleaseOwnerResponse {
            released: result?.iter().map(proto::released).collect(),
        }))
    }

    #[tracing::instrument(name = "GarbageCollect", skip_all, fields(n_pools = request.get_ref().pool_ids.len()))]
    async fn garbage_collect(
        &self,
        request: Request<pb::GarbageCollectRequest>,
    ) -> Result<Response<pb::GarbageCollectResponse>, Status> {
        let (caller, ipam) = self.driver(&request).await?;
        let r = request.get_ref();
        if r.pool_ids.is_empty() {
            return Err(invalid_request("name at least one pool to collect in"));
        }
        let pools = proto::pool_ids(&r.pool_ids).map_err(invalid)?;
        let min_age = u64::try_from(r.min_age_seconds)
            .map_err(|_| invalid_request("min_age_seconds is negative"))?;
        let live = r.live_owners.iter().cloned().collect();
        let result = super::reclaim::garbage_collect(
            ipam.as_ref(),
            pools,
            &live,
            (min_age.saturating_mul(1000), crate::store::unix_now_ms()),
            r.dry_run,
        )
        .await
        .map_err(|e| status(&e));
        if !r.dry_run {
            self.audit_taken(&caller, "GarbageCollect", &result);
        }
        Ok(Response::new(pb::GarbageCollectResponse {
            collected: result?.iter().map(proto::released).collect(),
        }))
    }

    #[tracing::instrument(name = "GetIpamState", skip_all, fields(n_pools = request.get_ref().pool_ids.len()))]
    async fn get_ipam_state(
        &self,
        request: Request<pb::GetIpamStateRequest>,
    ) -> Result<Response<pb::GetIpamStateResponse>, Status> {
        let (_, ipam) = self.driver(&request).await?;
        let r = request.get_ref();
        if r.pool_ids.is_empty() {
            // Every pool, a page at a time: one released between its listing and its state
            // is left out rather than failing the call.
            let page = proto::pool_page(r.page_size, &r.page_token).map_err(invalid)?;
            let (ids, next_page_token) = pool_page(ipam.as_ref(), None, page).await?;
            let mut states = ipam.utilization(&ids).await.map_err(|e| status(&e))?;
            states.retain(|s| !s.is_missing());
            return Ok(Response::new(pb::GetIpamStateResponse {
                pools: states.iter().map(proto::pool_state).collect(),
                next_page_token,
            }));
        }
        if r.page_size != 0 || !r.page_token.is_empty() {
            return Err(invalid_request(
                "page_size and page_token page through every pool: leave them out when naming pool_ids",
            ));
        }
        let ids = r
            .pool_ids
            .iter()
            .map(|s| proto::pool_id(s))
            .collect::<Result<Vec<_>, _>>()
            .map_err(invalid)?;
        let states = ipam.utilization(&ids).await.map_err(|e| status(&e))?;
        // Naming a pool that does not exist is the caller's mistake.
        if let Some(missing) = states.iter().find(|s| s.is_missing()) {
            return Err(status(&ipam::not_found(&missing.id)));
        }
        Ok(Response::new(pb::GetIpamStateResponse {
            pools: states.iter().map(proto::pool_state).collect(),
            next_page_token: String::new(),
        }))
    }
}
