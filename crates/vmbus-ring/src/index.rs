//! Validation of the indices the peer writes, and the "broken" state a ring
//! enters at the first violation. Shared by the writer (which checks the
//! reader's `read_index`) and the reader (which checks `write_index`).

use crate::error::{Corruption, CorruptionKind, IndexField};
use crate::layout::distance;

/// Checks that an index loaded from the control page is inside the data area
/// and 8-aligned.
pub(crate) fn check_index(field: IndexField, value: u32, size: u32) -> Result<u32, Corruption> {
    if value >= size {
        Err(Corruption::index(
            field,
            CorruptionKind::IndexOutOfRange {
                field,
                value,
                data_size: size,
            },
        ))
    } else if value % 8 != 0 {
        Err(Corruption::index(
            field,
            CorruptionKind::IndexUnaligned { field, value },
        ))
    } else {
        Ok(value)
    }
}

/// Checks an index the peer moved: valid as [`check_index`] says, and at
/// most `allowed` bytes forward of `last` (an owner only moves its index
/// forward, and never past what the other side made available).
pub(crate) fn check_moved_index(
    field: IndexField,
    value: u32,
    size: u32,
    last: u32,
    allowed: u32,
) -> Result<u32, Corruption> {
    let value = check_index(field, value, size)?;
    if distance(last, value, size) > allowed {
        return Err(Corruption::index(
            field,
            CorruptionKind::IndexMoved {
                field,
                last,
                value,
                allowed,
            },
        ));
    }
    Ok(value)
}

/// A ring's health: fine until the first corruption, broken for good after.
#[derive(Debug, Default)]
pub(crate) struct Health(Option<Corruption>);

impl Health {
    /// The corruption that broke the ring, if any.
    pub(crate) fn corruption(&self) -> Option<&Corruption> {
        self.0.as_ref()
    }

    /// Fails with the corruption if the ring is broken.
    pub(crate) fn check(&self) -> Result<(), Corruption> {
        match &self.0 {
            Some(corruption) => Err(corruption.clone()),
            None => Ok(()),
        }
    }

    /// Records a corruption (the first one stays) and returns it.
    pub(crate) fn poison(&mut self, corruption: Corruption) -> Corruption {
        self.0.get_or_insert(corruption).clone()
    }
}
