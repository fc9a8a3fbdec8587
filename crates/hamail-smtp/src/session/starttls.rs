//! STARTTLS (RFC 3207): the handshake on the session's stream, after which
//! the client starts over with EHLO.

use super::conn::{End, Step};
use super::{Flow, Session};
use crate::Backend;

impl<B: Backend> Session<B> {
    pub(super) async fn starttls(&mut self) -> Step<Flow> {
        let Some(tls) = self.settings.tls.clone() else {
            return Ok(self.error("502 5.5.1 Error: command not implemented"));
        };
        if self.tls {
            return Ok(self.error("554 5.5.1 Error: TLS already active"));
        }
        if self.txn.is_some() {
            return Ok(self.error("503 5.5.1 Error: MAIL transaction in progress"));
        }
        // Whatever the client pipelined after STARTTLS was sent in the
        // clear: it is dropped, never read as if it came inside TLS.
        let extra = self.conn.buffered().len();
        if extra > 0 {
            tracing::info!(target: "postfix/smtpd", "{} bytes pipelined after STARTTLS from {} discarded", extra, self.client());
            self.conn.consume(extra);
        }
        self.conn.reply("220 2.0.0 Ready to start TLS");
        self.conn.flush().await?;
        let plain = std::mem::replace(
            &mut self.conn.io,
            Box::new(tokio::io::join(tokio::io::empty(), tokio::io::sink())),
        );
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let handshake = tokio::time::timeout(self.idle_timeout(), acceptor.accept(plain)).await;
        match handshake {
            Ok(Ok(stream)) => {
                self.conn.io = Box::new(stream);
                self.tls = true;
                // RFC 3207: the client starts over with EHLO.
                self.helo = None;
                self.txn = None;
                Ok(Flow::Continue)
            }
            Ok(Err(e)) => {
                tracing::info!(target: "postfix/smtpd", "SSL_accept error from {}: {e}", self.client());
                Err(End::Closed)
            }
            Err(_) => Err(End::Timeout),
        }
    }
}
