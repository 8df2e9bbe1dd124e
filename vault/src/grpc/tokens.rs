//! `TokenService`: tokenize, read, list, update and revoke cards, over [`crate::tokens`].

use std::sync::Arc;

use tandem_proto::tandem::vault::v1 as pb;
use tonic::{Request, Response, Status};
use tracing::instrument;

use super::status::to_status;
use super::{Edge, convert, respond, today};
use crate::auth::Rpc;
use crate::kernel::Vault;

/// `TokenService` over the vault.
#[derive(Debug, Clone)]
pub struct TokenApi {
    edge: Edge,
}

impl TokenApi {
    /// Serves `vault`, reading caller identities under `uri_prefix`.
    pub fn new(vault: Arc<Vault>, uri_prefix: &str) -> TokenApi {
        TokenApi {
            edge: Edge::new(vault, uri_prefix),
        }
    }
}

#[tonic::async_trait]
impl pb::token_service_server::TokenService for TokenApi {
    #[instrument(skip_all, fields(rpc = "Tokenize", correlation_id, caller, token))]
    async fn tokenize(
        &self,
        request: Request<pb::TokenizeRequest>,
    ) -> Result<Response<pb::TokenizeResponse>, Status> {
        let ctx = self.edge.context(&request, Rpc::Tokenize).await?;
        let ttl_max = self.edge.vault().token_settings().ttl_seconds_max;
        let command = self
            .edge
            .check(
                &ctx,
                convert::tokenize(request.into_inner(), today(), ttl_max),
            )
            .await?;
        let (card, created) = self
            .edge
            .vault()
            .tokenize(&ctx, command)
            .await
            .map_err(to_status)?;
        tracing::Span::current().record("token", card.token.as_str());
        tracing::info!(created, last4 = %card.last4, "tokenized");
        Ok(respond(
            &ctx,
            pb::TokenizeResponse {
                card: Some(convert::card(&card)),
                created,
            },
        ))
    }

    #[instrument(skip_all, fields(rpc = "GetToken", correlation_id, caller, token))]
    async fn get_token(
        &self,
        request: Request<pb::GetTokenRequest>,
    ) -> Result<Response<pb::GetTokenResponse>, Status> {
        let ctx = self.edge.context(&request, Rpc::GetToken).await?;
        let token = self
            .edge
            .check(&ctx, convert::token(&request.get_ref().token))
            .await?;
        tracing::Span::current().record("token", token.as_str());
        let card = self
            .edge
            .vault()
            .get_token(&ctx, &token)
            .await
            .map_err(to_status)?;
        Ok(respond(
            &ctx,
            pb::GetTokenResponse {
                card: Some(convert::card(&card)),
            },
        ))
    }

    #[instrument(skip_all, fields(rpc = "ListTokens", correlation_id, caller))]
    async fn list_tokens(
        &self,
        request: Request<pb::ListTokensRequest>,
    ) -> Result<Response<pb::ListTokensResponse>, Status> {
        let ctx = self.edge.context(&request, Rpc::ListTokens).await?;
        let settings = self.edge.vault().token_settings();
        let query = self
            .edge
            .check(
                &ctx,
                convert::list_tokens(
                    request.get_ref(),
                    settings.page_size_default,
                    settings.page_size_max,
                ),
            )
            .await?;
        let page = self
            .edge
            .vault()
            .list_tokens(&ctx, &query.filter, query.before_id, query.page_size)
            .await
            .map_err(to_status)?;
        Ok(respond(
            &ctx,
            pb::ListTokensResponse {
                cards: page.cards.iter().map(convert::card).collect(),
                next_page_token: page
                    .next_before_id
                    .map(|id| convert::encode_page_token(id, &query.filter))
                    .unwrap_or_default(),
            },
        ))
    }

    #[instrument(skip_all, fields(rpc = "UpdateCard", correlation_id, caller, token))]
    async fn update_card(
        &self,
        request: Request<pb::UpdateCardRequest>,
    ) -> Result<Response<pb::UpdateCardResponse>, Status> {
        let ctx = self.edge.context(&request, Rpc::UpdateCard).await?;
        let command = self
            .edge
            .check(&ctx, convert::update_card(request.into_inner(), today()))
            .await?;
        tracing::Span::current().record("token", command.token.as_str());
        let card = self
            .edge
            .vault()
            .update_card(&ctx, command)
            .await
            .map_err(to_status)?;
        Ok(respond(
            &ctx,
            pb::UpdateCardResponse {
                card: Some(convert::card(&card)),
            },
        ))
    }

    #[instrument(skip_all, fields(rpc = "RevokeToken", correlation_id, caller, token))]
    async fn revoke_token(
        &self,
        request: Request<pb::RevokeTokenRequest>,
    ) -> Result<Response<pb::RevokeTokenResponse>, Status> {
        let ctx = self.edge.context(&request, Rpc::RevokeToken).await?;
        let (request_id, token, reason) = self
            .edge
            .check(&ctx, convert::revoke_token(request.get_ref()))
            .await?;
        tracing::Span::current().record("token", token.as_str());
        let card = self
            .edge
            .vault()
            .revoke_token(&ctx, request_id, token, reason)
            .await
            .map_err(to_status)?;
        Ok(respond(
            &ctx,
            pb::RevokeTokenResponse {
                card: Some(convert::card(&card)),
            },
        ))
    }

    #[instrument(skip_all, fields(rpc = "RevokeByFingerprint", correlation_id, caller))]
    async fn revoke_by_fingerprint(
        &self,
        request: Request<pb::RevokeByFingerprintRequest>,
    ) -> Result<Response<pb::RevokeByFingerprintResponse>, Status> {
        let ctx = self
            .edge
            .context(&request, Rpc::RevokeByFingerprint)
            .await?;
        let (request_id, selector, reason) = self
            .edge
            .check(&ctx, convert::revoke_by_fingerprint(request.into_inner()))
            .await?;
        let tokens = self
            .edge
            .vault()
            .revoke_by_fingerprint(&ctx, request_id, selector, reason)
            .await
            .map_err(to_status)?;
        tracing::info!(revoked = tokens.len(), "revoked by fingerprint");
        Ok(respond(
            &ctx,
            pb::RevokeByFingerprintResponse {
                revoked_tokens: tokens.iter().map(|t| t.as_str().to_owned()).collect(),
            },
        ))
    }
}
