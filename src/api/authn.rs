//! Authentication as one tower layer in front of every gRPC service: it reads the call's
//! credentials (`authorization` and `x-allot-tenant` metadata, the client certificate the TLS
//! handshake verified), asks the [`Authenticator`] who calls and whether it may, and either
//! passes the call on with its [`Caller`](crate::auth::Caller) in the request's extensions —
//! where the services take the tenant from — or answers the refusal itself. A service never
//! sees a call that was not checked.

use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::codegen::{BoxFuture, http};
use tower_service::Service;

use super::status::status;
use super::tls::ConnInfo;
use crate::auth::{Authenticator, RETRY_AFTER_HEADER, RetryAfter, TENANT_HEADER};

/// The layer; see the module's documentation.
#[derive(Clone)]
pub struct AuthLayer(Arc<Authenticator>);

impl AuthLayer {
    #[must_use]
    pub fn new(auth: Arc<Authenticator>) -> Self {
        Self(auth)
    }
}

impl<S> tower_layer::Layer<S> for AuthLayer {
    type Service = Authenticated<S>;

    fn layer(&self, inner: S) -> Authenticated<S> {
        Authenticated {
            inner,
            auth: Arc::clone(&self.0),
        }
    }
}

/// A service behind the authentication layer.
#[derive(Clone)]
pub struct Authenticated<S> {
    inner: S,
    auth: Arc<Authenticator>,
}

impl<S, B> Service<http::Request<B>> for Authenticated<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<B>) -> Self::Future {
        // The clone that was made ready is the one to call (tower's rule).
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let auth = Arc::clone(&self.auth);
        Box::pin(async move {
            let found = {
                let headers = req.headers();
                let text = |name: &str| headers.get(name).map(|v| v.to_str().map_err(|_| ()));
                let cert = req
                    .extensions()
                    .get::<ConnInfo>()
                    .and_then(|c| c.peer_cert.as_ref());
                auth.authenticate(
                    req.uri().path(),
                    text("authorization"),
                    text(TENANT_HEADER),
                    cert,
                )
                .await
            };
            match found {
                Ok(Some(caller)) => match auth.admit(&caller.tenant).await {
                    Ok(()) => {
                        req.extensions_mut().insert(caller);
                        inner.call(req).await
                    }
                    Err((e, retry)) => {
                        let mut refusal = status(&e);
                        if let Some(RetryAfter(wait)) = retry
                            && let Ok(value) = wait.as_millis().max(1).to_string().parse()
                        {
                            refusal.metadata_mut().insert(RETRY_AFTER_HEADER, value);
                        }
                        Ok(refusal.into_http())
                    }
                },
                Ok(None) => inner.call(req).await,
                Err(e) => {
                    let refusal = status(&e);
                    tracing::info!(
                        target: "allot::audit",
                        rpc = %crate::engine::error::shown(req.uri().path()),
                        code = super::status::code_name(refusal.code()),
                        reason = refusal.message(),
                        "refused"
                    );
                    Ok(refusal.into_http())
                }
            }
        })
    }
}
