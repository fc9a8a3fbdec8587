//! hamail-smtp
