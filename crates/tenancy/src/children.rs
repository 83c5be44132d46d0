//! The tenant supervisor's children. Each is a small struct, a `State` built
//! in `pre_start` and one `Msg` enum; none does I/O inside a handler: work
//! that waits on storage or CPU runs in a task that reports back.

use std::sync::Arc;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use crate::Deps;
use crate::audit::RequestMeta;
use crate::runtime::TenantRuntime;
use crate::tenant::TenantMsg;

// ---------------------------------------------------------------- session

/// Owns the tenant's signing-key lifecycle (rotation) and session policy.
/// Supervision: restarted alone by the tenant supervisor; it holds no state
/// that is not in storage, so a restart loses nothing.
pub struct SessionActor;

pub struct SessionArgs {
    pub runtime: Arc<TenantRuntime>,
    pub deps: Arc<Deps>,
    pub supervisor: ActorRef<TenantMsg>,
}

pub enum SessionMsg {
    /// Generate a new signing key; it signs after one JWKS cache lifetime,
    /// or at once with `immediate` (a new algorithm, or a compromised key).
    /// With `revoke_older` (a compromised key) every older key leaves the
    /// JWKS and verification at once.
    RotateKey {
        immediate: bool,
        revoke_older: bool,
        actor: Option<authd_core::UserId>,
        meta: RequestMeta,
        reply: RpcReplyPort<authd_core::Result<crate::keyset::KeyInfo>>,
    },
    #[cfg(feature = "testing")]
    Crash,
}

#[ractor::async_trait]
impl Actor for SessionActor {
    type Msg = SessionMsg;
    type State = SessionArgs;
    type Arguments = SessionArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<SessionMsg>,
        args: SessionArgs,
    ) -> Result<SessionArgs, ActorProcessingErr> {
        Ok(args)
    }

    async fn handle(
        &self,
        _myself: ActorRef<SessionMsg>,
        msg: SessionMsg,
        state: &mut SessionArgs,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SessionMsg::RotateKey { immediate, revoke_older, actor, meta, reply } => {
                let (deps, runtime, sup) = (state.deps.clone(), state.runtime.clone(), state.supervisor.clone());
                tokio::spawn(async move {
                    let result = crate::keyset::rotate(&deps, &runtime, immediate, revoke_older, actor, &meta).await;
                    if result.is_ok() {
                        let _ = sup.cast(TenantMsg::Reload);
                    }
                    let _ = reply.send(result);
                });
            }
            #[cfg(feature = "testing")]
            SessionMsg::Crash => {
                return Err("injected session actor failure".into());
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- rate limiter

/// Holds the tenant's rate-limit policy and its local governors. Counters that
/// must survive a restart live in the token store, not here.
/// Supervision: restarted alone; a restart only rebuilds local governors.
pub struct RateLimiterActor;

pub struct RateState {
    pub runtime: Arc<TenantRuntime>,
    pub policy: authd_core::settings::RateLimitPolicy,
}

pub enum RateMsg {
    /// The tenant's settings changed: pick up the new policy.
    PolicyChanged,
    #[cfg(feature = "testing")]
    Crash,
}

#[ractor::async_trait]
impl Actor for RateLimiterActor {
    type Msg = RateMsg;
    type State = RateState;
    type Arguments = Arc<TenantRuntime>;

    async fn pre_start(
        &self,
        _myself: ActorRef<RateMsg>,
        runtime: Arc<TenantRuntime>,
    ) -> Result<RateState, ActorProcessingErr> {
        let policy = runtime.snapshot().record.settings.rate_limits.clone();
        runtime.update_quota(policy.tenant_requests_per_second);
        Ok(RateState { runtime, policy })
    }

    async fn handle(
        &self,
        _myself: ActorRef<RateMsg>,
        msg: RateMsg,
        state: &mut RateState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            RateMsg::PolicyChanged => {
                state.policy = state.runtime.snapshot().record.settings.rate_limits.clone();
                state.runtime.update_quota(state.policy.tenant_requests_per_second);
            }
            #[cfg(feature = "testing")]
            RateMsg::Crash => {
                return Err("injected rate limiter failure".into());
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------- OAuth provider

// One per configured OAuth/OIDC provider; it lives with the rest of social
// login in `crate::oauth::provider`.
pub use crate::oauth::provider::{OAuthProviderActor, ProviderArgs, ProviderMsg};
