-- Observability (DESIGN section 14): the open discrepancies by processor and class, which the
-- metrics endpoint counts at a scrape (few rows: discrepancies are the exceptions, open ones
-- fewer still).
CREATE INDEX recon_discrepancies_open ON recon_discrepancies (processor, class)
    WHERE state = 'open';
