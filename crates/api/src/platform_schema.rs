//! The platform schema (`schema/platform.graphql`), served at `POST /graphql`
//! to operators holding the platform token.

use async_graphql::connection::{Connection, Edge};
use async_graphql::{Context, EmptySubscription, ID, InputObject, Json, Object, Result, Schema, SimpleObject};
use authd_core::records::{PlatformEvent, TenantRecord};
use authd_core::{Error, TenantId};
use authd_tenancy::audit::RequestMeta;
use authd_tenancy::{CreateTenant, Platform};
use chrono::{DateTime, Utc};

use crate::errors::GqlResult;
use crate::graphql::{MAX_COMPLEXITY, MAX_DEPTH, page_size};

pub type PlatformSchema = Schema<PlatformQuery, PlatformMutation, EmptySubscription>;

pub fn build() -> PlatformSchema {
    Schema::build(PlatformQuery, PlatformMutation, EmptySubscription)
        .limit_depth(MAX_DEPTH)
        .limit_complexity(MAX_COMPLEXITY)
        .finish()
}

/// Put into the context by the route once the platform token checked out.
pub struct PlatformRequest {
    pub platform: Platform,
    pub meta: RequestMeta,
    /// Which operator token acted (a fingerprint, never the token).
    pub operator: String,
}

fn req<'a>(ctx: &'a Context<'_>) -> Result<&'a PlatformRequest> {
    ctx.data::<PlatformRequest>()
}

#[derive(SimpleObject)]
pub struct Tenant {
    id: ID,
    slug: String,
    name: String,
    issuer: String,
    disabled: bool,
    created_at: DateTime<Utc>,
}

fn tenant_out(r: &PlatformRequest, t: TenantRecord) -> Tenant {
    Tenant {
        id: ID(t.id.to_string()),
        issuer: r.platform.deps.config.issuer(t.slug.as_str()),
        slug: t.slug.to_string(),
        name: t.name,
        disabled: t.disabled,
        created_at: t.created_at,
    }
}

/// An operator action. `actorId` and `subjectId` are null (operators are
/// not users); `detail` names the tenant and the operator token.
pub struct AuditEvent(PlatformEvent);

#[Object]
impl AuditEvent {
    async fn id(&self) -> ID {
        ID(self.0.id.to_string())
    }
    async fn at(&self) -> DateTime<Utc> {
        self.0.at
    }
    #[graphql(name = "type")]
    async fn kind(&self) -> &str {
        &self.0.kind
    }
    async fn actor_id(&self) -> Option<ID> {
        None
    }
    async fn subject_id(&self) -> Option<ID> {
        None
    }
    async fn ip(&self) -> Option<&str> {
        self.0.ip.as_deref()
    }
    async fn user_agent(&self) -> Option<&str> {
        self.0.user_agent.as_deref()
    }
    async fn request_id(&self) -> Option<&str> {
        self.0.request_id.as_deref()
    }
    async fn detail(&self) -> Json<serde_json::Value> {
        let mut d = self.0.detail.clone().unwrap_or_else(|| serde_json::json!({}));
        if let Some(map) = d.as_object_mut() {
            map.insert("tenantId".into(), self.0.tenant_id.map(|t| t.to_string()).into());
            map.insert("tenantSlug".into(), self.0.tenant_slug.clone().into());
            map.insert("operator".into(), self.0.operator.clone().into());
        }
        Json(d)
    }
}

#[derive(InputObject)]
pub struct CreateTenantInput {
    slug: String,
    name: String,
    admin_email: String,
    admin_password: String,
}

pub struct PlatformQuery;

#[Object(name = "Query")]
impl PlatformQuery {
    /// Every tenant, oldest first.
    async fn tenants(
        &self,
        ctx: &Context<'_>,
        #[graphql(default_with = "Some(50)")] first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, Tenant>> {
        let r = req(ctx)?;
        let limit = page_size(first, 50)?;
        let after = match after {
            Some(c) => Some(
                crate::cursor::decode(&c)
                    .and_then(|s| {
                        s.parse::<TenantId>().map_err(|_| Error::bad_input("after", "not a cursor from this API"))
                    })
                    .gql()?,
            ),
            None => None,
        };
        let mut rows = r.platform.list_tenants(after, limit + 1).await.gql()?;
        let has_next = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let mut conn = Connection::new(after.is_some(), has_next);
        conn.edges
            .extend(rows.into_iter().map(|t| Edge::new(crate::cursor::encode(&t.id.to_string()), tenant_out(r, t))));
        Ok(conn)
    }

    /// One tenant by slug, or null.
    async fn tenant(&self, ctx: &Context<'_>, slug: String) -> Result<Option<Tenant>> {
        let r = req(ctx)?;
        Ok(r.platform.tenant_record(&slug).await.gql()?.map(|t| tenant_out(r, t)))
    }

    /// Operator actions, newest first; they survive `deleteTenant`.
    async fn audit_events(
        &self,
        ctx: &Context<'_>,
        #[graphql(default_with = "Some(50)")] first: Option<i32>,
        after: Option<String>,
    ) -> Result<Connection<String, AuditEvent>> {
        let r = req(ctx)?;
        let limit = page_size(first, 50)?;
        let cursor = after.as_deref().map(crate::cursor::parse_event).transpose().gql()?;
        let mut rows = r.platform.platform_events(cursor, limit + 1).await.gql()?;
        let has_next = rows.len() > limit as usize;
        rows.truncate(limit as usize);
        let mut conn = Connection::new(cursor.is_some(), has_next);
        conn.edges.extend(rows.into_iter().map(|e| {
            let cursor = crate::cursor::event(e.at, e.id);
            Edge::new(cursor, AuditEvent(e))
        }));
        Ok(conn)
    }
}

pub struct PlatformMutation;

#[Object(name = "Mutation")]
impl PlatformMutation {
    /// Creates a tenant, its first signing key and its first admin, in one transaction.
    async fn create_tenant(&self, ctx: &Context<'_>, input: CreateTenantInput) -> Result<Tenant> {
        let r = req(ctx)?;
        let input = CreateTenant {
            slug: input.slug,
            name: input.name,
            admin_email: input.admin_email,
            admin_password: input.admin_password,
        };
        let t = r.platform.create_tenant(input, &r.operator, &r.meta).await.gql()?;
        Ok(tenant_out(r, t))
    }

    /// Disables (every request answers `TENANT_DISABLED`) or re-enables a tenant.
    async fn set_tenant_disabled(&self, ctx: &Context<'_>, slug: String, disabled: bool) -> Result<Tenant> {
        let r = req(ctx)?;
        let t = r.platform.set_tenant_disabled(&slug, disabled, &r.operator, &r.meta).await.gql()?;
        Ok(tenant_out(r, t))
    }

    /// Deletes a tenant and everything it owns, in one transaction.
    async fn delete_tenant(&self, ctx: &Context<'_>, slug: String) -> Result<bool> {
        let r = req(ctx)?;
        r.platform.delete_tenant(&slug, &r.operator, &r.meta).await.gql()
    }
}
