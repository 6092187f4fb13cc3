//! The capability a handler reads through: it opens only the databases the request's token
//! may read. Handlers never see the [`Store`], so a handler cannot reach another tenant's
//! file by forgetting a filter: isolation is in what can be opened, not in a `WHERE` clause.

use crate::error::ApiError;
use crate::metrics::ApiMetrics;
use crate::token::{Principal, PrincipalScope};
use opha_common::wire::TenantId;
use opha_store::{Store, TenantDb};

pub struct Access<'a> {
    store: &'a Store,
    principal: &'a Principal,
    metrics: &'a ApiMetrics,
    /// For the log line of a refusal.
    path: &'a str,
}

impl<'a> Access<'a> {
    pub(crate) fn new(
        store: &'a Store,
        principal: &'a Principal,
        metrics: &'a ApiMetrics,
        path: &'a str,
    ) -> Self {
        Self {
            store,
            principal,
            metrics,
            path,
        }
    }

    pub fn principal(&self) -> &Principal {
        self.principal
    }

    /// The tenant a tenant token is bound to; `None` for operators.
    pub fn own_tenant(&self) -> Option<TenantId> {
        match self.principal.scope {
            PrincipalScope::Operator => None,
            PrincipalScope::Tenant(t) => Some(t),
        }
    }

    /// Refuses (403, counted, logged) a tenant this token may not read. `param` names where
    /// the request named it (`tenant`, or a path part).
    pub fn authorize(&self, tenant: TenantId, param: &str) -> Result<(), ApiError> {
        match self.principal.scope {
            PrincipalScope::Operator => Ok(()),
            PrincipalScope::Tenant(own) if own == tenant => Ok(()),
            PrincipalScope::Tenant(own) => {
                self.metrics.forbidden();
                log::warn!(
                    "api: forbidden: token {:?} (tenant {own}) asked for tenant {tenant} on {}",
                    self.principal.name,
                    self.path
                );
                Err(ApiError::forbidden(
                    param,
                    format!("this token may read tenant {own} only"),
                ))
            }
        }
    }

    /// Refuses (403, counted, logged) a tenant token: `what` is for operators only (e.g.
    /// poller configuration, which carries every tenant's prefixes).
    pub fn require_operator(&self, param: &str, message: &str) -> Result<(), ApiError> {
        match self.principal.scope {
            PrincipalScope::Operator => Ok(()),
            PrincipalScope::Tenant(own) => {
                self.metrics.forbidden();
                log::warn!(
                    "api: forbidden: token {:?} (tenant {own}) asked for operator-only {}",
                    self.principal.name,
                    self.path
                );
                Err(ApiError::forbidden(param, message))
            }
        }
    }

    /// The databases of the tenants a request reads, ascending: `requested` (after
    /// [`Access::authorize`]) or, when absent, the token's own tenant or (operator) every
    /// tenant on disk. Tenants with no file yet are left out (a read never creates a file).
    pub fn tenants(
        &self,
        requested: Option<TenantId>,
    ) -> Result<Vec<(TenantId, TenantDb)>, ApiError> {
        let wanted: Vec<TenantId> = match (requested, self.own_tenant()) {
            (Some(t), _) => {
                self.authorize(t, "tenant")?;
                vec![t]
            }
            (None, Some(own)) => vec![own],
            (None, None) => self.store.tenants_on_disk()?,
        };
        let on_disk = self.store.tenants_on_disk()?;
        let mut out = Vec::with_capacity(wanted.len());
        for t in wanted {
            if on_disk.binary_search(&t).is_ok() {
                out.push((t, self.store.tenant(t)?));
            }
        }
        Ok(out)
    }

    /// The system scope (peer heartbeats, daemon health): infrastructure, no tenant's
    /// records; handlers filter per-tenant node counts out of it for tenant tokens. `None`
    /// when no system file exists yet.
    pub fn system(&self) -> Result<Option<TenantDb>, ApiError> {
        if !self
            .store
            .dir()
            .join(opha_store::Scope::System.file_name())
            .exists()
        {
            return Ok(None);
        }
        Ok(Some(self.store.system()?))
    }
}
