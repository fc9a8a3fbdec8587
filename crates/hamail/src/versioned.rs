//! A value the smtpd derives from an applied table (compiled checks, loaded
//! DKIM keys), rebuilt only when the table's version counter moves: one
//! small read per message, the expensive build once per change.

use std::sync::Mutex;

pub struct Versioned<T> {
    current: Mutex<Option<(u64, T)>>,
}

impl<T> Default for Versioned<T> {
    fn default() -> Self {
        Versioned {
            current: Mutex::new(None),
        }
    }
}

impl<T: Clone> Versioned<T> {
    /// The value for `version`: the one kept if it was built for it, else
    /// `build`'s, kept when it succeeds (a failed build is tried again by
    /// the next caller). The lock is held while building: one session
    /// builds, the others wait for it.
    pub fn get<E>(&self, version: u64, build: impl FnOnce() -> Result<T, E>) -> Result<T, E> {
        let mut cur = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if let Some((v, value)) = cur.as_ref()
            && *v == version
        {
            return Ok(value.clone());
        }
        let value = build()?;
        *cur = Some((version, value.clone()));
        Ok(value)
    }
}
