package databricks_emulator;

import java.io.IOException;
import java.net.URI;

import org.apache.hadoop.fs.FSDataInputStream;
import org.apache.hadoop.fs.FSDataOutputStream;
import org.apache.hadoop.fs.FileStatus;
import org.apache.hadoop.fs.Path;
import org.apache.hadoop.fs.RawLocalFileSystem;
import org.apache.hadoop.fs.permission.FsPermission;
import org.apache.hadoop.util.Progressable;

/**
 * {@code dbfs:/} on a workspace whose DBFS root is disabled: every access fails the way Spark
 * does on Databricks ({@code [DBFS_DISABLED] Public DBFS root is disabled. Access is denied on
 * path: /x SQLSTATE: 56038}).
 */
public class DisabledDbfsFileSystem extends RawLocalFileSystem {
  private static UnsupportedOperationException denied(Path path) {
    String p = path == null ? "/" : path.toUri().getPath();
    return new UnsupportedOperationException(
        "[DBFS_DISABLED] Public DBFS root is disabled. Access is denied on path: "
            + p
            + " SQLSTATE: 56038");
  }

  @Override
  public URI getUri() {
    return URI.create("dbfs:///");
  }

  @Override
  public String getScheme() {
    return "dbfs";
  }

  @Override
  public FSDataInputStream open(Path f, int bufferSize) throws IOException {
    throw denied(f);
  }

  @Override
  public FSDataOutputStream append(Path f, int bufferSize, Progressable progress)
      throws IOException {
    throw denied(f);
  }

  @Override
  public FSDataOutputStream create(
      Path f,
      boolean overwrite,
      int bufferSize,
      short replication,
      long blockSize,
      Progressable progress)
      throws IOException {
    throw denied(f);
  }

  @Override
  public FSDataOutputStream create(
      Path f,
      FsPermission permission,
      boolean overwrite,
      int bufferSize,
      short replication,
      long blockSize,
      Progressable progress)
      throws IOException {
    throw denied(f);
  }

  @Override
  public boolean rename(Path src, Path dst) throws IOException {
    throw denied(src);
  }

  @Override
  public boolean delete(Path p, boolean recursive) throws IOException {
    throw denied(p);
  }

  @Override
  public FileStatus[] listStatus(Path f) throws IOException {
    throw denied(f);
  }

  @Override
  public boolean mkdirs(Path f) throws IOException {
    throw denied(f);
  }

  @Override
  public boolean mkdirs(Path f, FsPermission permission) throws IOException {
    throw denied(f);
  }

  @Override
  public FileStatus getFileStatus(Path f) throws IOException {
    throw denied(f);
  }
}
