//! The CLI's side of the admin socket: one request, one reply.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};

use crate::{AdminError, AdminRequest, AdminResponse};

#[derive(Debug)]
pub struct AdminClient {
    path: PathBuf,
    stream: BufReader<UnixStream>,
}

impl AdminClient {
    pub fn connect(path: &Path) -> Result<Self, AdminError> {
        let stream = UnixStream::connect(path).map_err(|e| AdminError::Connect {
            path: path.display().to_string(),
            reason: e.to_string(),
        })?;
        Ok(AdminClient {
            path: path.to_path_buf(),
            stream: BufReader::new(stream),
        })
    }

    fn io(&self, e: std::io::Error) -> AdminError {
        AdminError::Io {
            path: self.path.display().to_string(),
            reason: e.to_string(),
        }
    }

    /// Sends a request; returns the result, or the server's error as
    /// [`AdminError::Server`].
    pub fn call(&mut self, req: &AdminRequest) -> Result<serde_json::Value, AdminError> {
        let mut line = serde_json::to_vec(req).map_err(|e| AdminError::Reply(e.to_string()))?;
        line.push(b'\n');
        self.stream
            .get_mut()
            .write_all(&line)
            .map_err(|e| self.io(e))?;
        let mut reply = String::new();
        let n = self.stream.read_line(&mut reply).map_err(|e| self.io(e))?;
        if n == 0 {
            return Err(AdminError::Reply("the server closed the connection".into()));
        }
        let resp: AdminResponse =
            serde_json::from_str(&reply).map_err(|e| AdminError::Reply(e.to_string()))?;
        if resp.ok {
            Ok(resp.result)
        } else {
            Err(AdminError::Server(
                resp.error.unwrap_or_else(|| "unspecified error".into()),
            ))
        }
    }
}
