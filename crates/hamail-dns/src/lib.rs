//! hamail-dns
