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
 *
 * <p>One exception: the hive_metastore's {@code default} database, which every workspace has,
 * lives at the warehouse root {@code dbfs:/user/hive/warehouse}. Spark's session catalog creates
 * it ({@code mkdirs}) when it starts, and the Unity Catalog plugin works through that catalog, so
 * that one {@code mkdirs} succeeds (creating nothing): Unity Catalog tables work without a DBFS
 * root, as on Databricks, while writing a hive_metastore managed table still fails.
 */
public class DisabledDbfsFileSystem extends RawLocalFileSystem {
  private static final String WAREHOUSE_ROOT = "/user/hive/warehouse";

  private static boolean isWarehouseRoot(Path path) {
    return path != null && WAREHOUSE_ROOT.equals(path.toUri().getPath().replaceAll("/+$", ""));
  }

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
    if (isWarehouseRoot(f)) {
      return true;
    }
    throw denied(f);
  }

  @Override
  public boolean mkdirs(Path f, FsPermission permission) throws IOException {
    if (isWarehouseRoot(f)) {
      return true;
    }
    throw denied(f);
  }

  @Override
  public FileStatus getFileStatus(Path f) throws IOException {
    throw denied(f);
  }
}
