//! The queue and bodies tables: applying queue commands and reading the
//! queue back. Both tables are keyed by queue id; a body is kept as the raw
//! message bytes (no codec: it is opaque and may be megabytes).

use hamail_types::queue::ResultApplied;
use hamail_types::{
    NewMessage, Outcome, QueueEntry, QueueId, QueueRecipient, QueueSelector, RecipientStatus,
};

use crate::apply::{Applier, ApplyContext};
use crate::{Result, Store, Table, decode};

impl Applier<'_> {
    pub(crate) fn queue_insert(&mut self, m: &NewMessage, ctx: &ApplyContext) -> Result<Outcome> {
        let key = m.queue_id.as_str().as_bytes().to_vec();
        if self.get(Table::Queue, &key)?.is_some() {
            return Ok(Outcome::rejected(format!(
                "queue id {} is already in use",
                m.queue_id
            )));
        }
        let entry = QueueEntry {
            queue_id: m.queue_id.clone(),
            sender: m.sender.clone(),
            recipients: m
                .recipients
                .iter()
                .map(|a| QueueRecipient {
                    address: a.clone(),
                    status: RecipientStatus::Pending,
                })
                .collect(),
            arrival_ms: ctx.time_ms,
            size: m.body.len() as u64,
            owner: m.owner,
            epoch: 1,
            held: m.held,
            content_filter: m.content_filter.clone(),
            client: m.client.clone(),
            helo: m.helo.clone(),
            smtputf8: m.smtputf8,
            eight_bit: m.eight_bit,
        };
        self.put(Table::Queue, key.clone(), &entry);
        self.put_raw(Table::Bodies, key, m.body.clone());
        Ok(Outcome::applied(format!("queued as {}", m.queue_id)))
    }

    /// The entries a selector names, this batch's writes included.
    fn selected(&self, which: &QueueSelector) -> Result<Vec<QueueEntry>> {
        let keys: Vec<Vec<u8>> = match which {
            QueueSelector::All => self.keys_with_prefix(Table::Queue, b"")?,
            QueueSelector::Ids(ids) => ids.iter().map(|i| i.as_str().as_bytes().to_vec()).collect(),
        };
        let mut out = Vec::new();
        for k in keys {
            if let Some(e) = self.get_typed::<QueueEntry>(Table::Queue, &k, "queue entry")? {
                out.push(e);
            }
        }
        Ok(out)
    }

    fn none_selected(which: &QueueSelector) -> Outcome {
        match which {
            QueueSelector::All => Outcome::applied("the queue is empty"),
            QueueSelector::Ids(ids) => Outcome::rejected(format!(
                "no such message in the queue: {}",
                ids.iter()
                    .map(|i| i.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
        }
    }

    pub(crate) fn queue_delete(&mut self, which: &QueueSelector) -> Result<Outcome> {
        let entries = self.selected(which)?;
        if entries.is_empty() {
            return Ok(Self::none_selected(which));
        }
        for e in &entries {
            let key = e.queue_id.as_str().as_bytes().to_vec();
            self.delete(Table::Bodies, key.clone());
            self.delete(Table::Queue, key);
        }
        Ok(Outcome::applied(format!(
            "deleted {} message{}",
            entries.len(),
            if entries.len() == 1 { "" } else { "s" }
        )))
    }

    pub(crate) fn queue_hold(&mut self, which: &QueueSelector, hold: bool) -> Result<Outcome> {
        let entries = self.selected(which)?;
        if entries.is_empty() {
            return Ok(Self::none_selected(which));
        }
        let mut changed = 0;
        for mut e in entries {
            if e.held != hold {
                e.held = hold;
                changed += 1;
                self.put(Table::Queue, e.queue_id.as_str().as_bytes().to_vec(), &e);
            }
        }
        Ok(Outcome::applied(format!(
            "{} {changed} message{}",
            if hold { "held" } else { "released" },
            if changed == 1 { "" } else { "s" }
        )))
    }

    pub(crate) fn queue_flush(&mut self, which: &QueueSelector, now_ms: u64) -> Result<Outcome> {
        let entries = self.selected(which)?;
        if entries.is_empty() {
            return Ok(Self::none_selected(which));
        }
        let mut due = 0;
        for mut e in entries {
            let mut touched = false;
            for r in &mut e.recipients {
                if let RecipientStatus::Deferred { next_try_ms, .. } = &mut r.status
                    && *next_try_ms > now_ms
                {
                    *next_try_ms = now_ms;
                    touched = true;
                    due += 1;
                }
            }
            if touched {
                self.put(Table::Queue, e.queue_id.as_str().as_bytes().to_vec(), &e);
            }
        }
        Ok(Outcome::applied(format!(
            "{due} deferred recipient{} due now",
            if due == 1 { "" } else { "s" }
        )))
    }
}

impl Applier<'_> {
    pub(crate) fn queue_result(
        &mut self,
        queue_id: &QueueId,
        epoch: u64,
        results: &[(hamail_types::MailAddress, RecipientStatus)],
        notice: Option<&NewMessage>,
        ctx: &ApplyContext,
    ) -> Result<Outcome> {
        let key = queue_id.as_str().as_bytes().to_vec();
        let Some(mut e) = self.get_typed::<QueueEntry>(Table::Queue, &key, "queue entry")? else {
            return Ok(Outcome::rejected(format!(
                "no such message in the queue: {queue_id}"
            )));
        };
        if e.epoch != epoch {
            return Ok(Outcome::rejected(format!(
                "{queue_id}: stale lease epoch {epoch} (the message is now node {}'s, epoch {}): result refused",
                e.owner, e.epoch
            )));
        }
        let mut newly_bounced = 0;
        for (address, status) in results {
            // A final recipient stays final (a late duplicate changes nothing).
            if let Some(r) = e
                .recipients
                .iter_mut()
                .find(|r| &r.address == address && !r.status.is_final())
            {
                if matches!(status, RecipientStatus::Bounced { .. }) {
                    newly_bounced += 1;
                }
                r.status = status.clone();
            }
        }
        // One notice per bounce: none for a repeated result, none to `<>`.
        let mut noticed = None;
        if let Some(n) = notice
            && newly_bounced > 0
            && e.sender.is_some()
            && self.queue_insert(n, ctx)?.is_applied()
        {
            noticed = Some(n.queue_id.clone());
        }
        let removed = e.recipients.iter().all(|r| r.status.is_final());
        if removed {
            self.delete(Table::Bodies, key.clone());
            self.delete(Table::Queue, key);
        } else {
            self.put(Table::Queue, key, &e);
        }
        let done = ResultApplied {
            queue_id: queue_id.clone(),
            removed,
            notice: noticed,
        };
        Ok(Outcome::ResultRecorded(done))
    }

    pub(crate) fn queue_reassign(
        &mut self,
        from: hamail_types::NodeId,
        to: &[hamail_types::NodeId],
    ) -> Result<Outcome> {
        let mut moved = 0usize;
        for key in self.keys_with_prefix(Table::Queue, b"")? {
            let Some(mut e) = self.get_typed::<QueueEntry>(Table::Queue, &key, "queue entry")?
            else {
                continue;
            };
            if e.owner != from {
                continue;
            }
            e.owner = to[moved % to.len()];
            e.epoch += 1;
            moved += 1;
            self.put(Table::Queue, key, &e);
        }
        Ok(Outcome::applied(format!(
            "{moved} message{} of node {from} handed to node{} {}",
            if moved == 1 { "" } else { "s" },
            if to.len() == 1 { "" } else { "s" },
            to.iter()
                .map(|n| n.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        )))
    }
}

impl Store {
    /// Every queued message, in queue-id (arrival) order.
    pub fn queue_entries(&self) -> Result<Vec<QueueEntry>> {
        let mut out = Vec::new();
        self.scan_prefix(Table::Queue, b"", |_, v| {
            out.push(decode("queue entry", v)?);
            Ok(())
        })?;
        Ok(out)
    }

    pub fn queue_entry(&self, id: &QueueId) -> Result<Option<QueueEntry>> {
        self.get(Table::Queue, id.as_str().as_bytes())?
            .map(|v| decode("queue entry", &v))
            .transpose()
    }

    /// The message bytes of a queued message.
    pub fn queue_body(&self, id: &QueueId) -> Result<Option<Vec<u8>>> {
        self.get(Table::Bodies, id.as_str().as_bytes())
    }
}
