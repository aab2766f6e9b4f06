//! Snapshots: the runtime's position (the contiguous watermark and, when there are any, the
//! events completed above it) is written into the processor's snapshot before it is stored,
//! so the stored `lastEventCursor` never covers unfinished work, whatever the processor's own
//! bookkeeping says (docs/semantics.md, "Checkpoints").

use super::Driver;
use crate::error::{Error, Result};
use crate::lanes::checkpoint::{write_layout, write_position};
use crate::stats::Stats;

impl Driver {
    /// The processor's snapshot, as JSON text. The runtime's position (watermark and completed
    /// set) is written into it; the result is skipped when identical to the last one saved,
    /// otherwise handed to the writer (never waits).
    pub fn submit_snapshot(&mut self, json: String) -> Result<()> {
        self.snapshot_wanted = false;
        self.handled_at_snapshot = self.handled_total;
        let watermark = self.lanes.watermark().map(str::to_string);
        let completed = if self.concurrent || self.lanes.has_carried() {
            self.lanes.completed_above_watermark()
        } else {
            Vec::new()
        };
        if let Some((text, w, c)) = &self.last_snapshot {
            if *text == json && *w == watermark && *c == completed {
                Stats::add(&self.stats.checkpoints_skipped, 1);
                return Ok(());
            }
        }
        let mut value = crate::jsonvalue::snapshot_value(
            &json,
            &self.cfg.client_id,
            &self.content_type,
            self.checkpoints.max_message_size(),
        )
        .map_err(Error::Invalid)?;
        let layout = self.cfg.shard_layout();
        if write_position(&mut value, watermark.as_deref(), &completed).is_err()
            && (self.concurrent || !layout.is_whole())
        {
            return Err(Error::Invalid(
                "snapshot() must return a JSON object when max_concurrency > 1 or retries or \
                 on_failure=\"skip\" or shard_count > 1 are on: the runtime stores its \
                 position in it"
                    .into(),
            ));
        }
        // The shard layout sits next to the position (removed when there is one shard).
        let _ = write_layout(&mut value, layout);
        let stored = value.to_string();
        self.last_snapshot = Some((json, watermark, completed));
        if self.last_saved.as_deref() == Some(stored.as_str()) {
            Stats::add(&self.stats.checkpoints_skipped, 1);
            return Ok(());
        }
        self.writer.submit(value);
        self.last_saved = Some(stored);
        Ok(())
    }
}
