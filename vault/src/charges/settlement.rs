//! Settlement files (`ChargeService.DownloadSettlementFile`): a processor's file of one day
//! (today's is the day so far), from the connector, checked and cut into chunks, and audited as a read.

use std::sync::Arc;

use crate::charges::Charges;
use crate::connector::ConnectorError;
use crate::domain::settlement::ChunkedFile;
use crate::error::Error;
use crate::kernel::RequestContext;

impl Charges {
    /// The connector's settlement file of `day`, checked and cut into chunks of at most
    /// `chunk_bytes_max` bytes of whole lines. The caller has checked that the day is not in the future
    /// and that the processor is this vault's. Audited as `GetCharge` is: one row for the read,
    /// naming the file (`settlement/<processor>/<day>`) and its record count, or one for the
    /// refusal. Runs in a task of its own, so a caller who hangs up still leaves its audit row.
    ///
    /// Errors: `SettlementFileTooLarge` beyond `connector.settlement_file_records_max`
    /// records; `ProcessorUnavailable` when the processor cannot deliver the file (unreachable,
    /// too slow, its breaker open, its storage failing, or a file outside the contract).
    pub async fn settlement_file(
        self: &Arc<Self>,
        ctx: RequestContext,
        day: time::Date,
        chunk_bytes_max: usize,
    ) -> Result<ChunkedFile, Error> {
        let this = self.clone();
        self.detached(async move {
            match this.connector.settlement_file(day, chunk_bytes_max).await {
                Ok(file) => {
                    let resource = format!("settlement/{}/{day}", this.connector.name());
                    let reason = format!("{} records", file.records);
                    this.vault
                        .audit_on(&ctx, None, &resource, "OK", &reason)
                        .await?;
                    Ok(file)
                }
                Err(error) => {
                    tracing::warn!(%error, %day, "settlement file not delivered");
                    let error = match error {
                        ConnectorError::SettlementFileTooLarge { records_max } => {
                            Error::SettlementFileTooLarge { records_max }
                        }
                        // A read leaves nothing pending: whatever stopped it, the file is not
                        // available now and the same request may be sent again.
                        ConnectorError::Timeout
                        | ConnectorError::Unavailable(_)
                        | ConnectorError::CircuitOpen
                        | ConnectorError::Storage(_) => Error::ProcessorUnavailable,
                    };
                    Err(this.vault.refuse(&ctx, None, error).await)
                }
            }
        })
        .await
    }
}
