package databricks_emulator;

import java.io.IOException;
import java.io.UncheckedIOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.Paths;
import java.util.ArrayList;
import java.util.Comparator;
import java.util.HashMap;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;

import org.apache.spark.sql.catalyst.analysis.NamespaceAlreadyExistsException;
import org.apache.spark.sql.catalyst.analysis.NoSuchNamespaceException;
import org.apache.spark.sql.catalyst.analysis.NoSuchTableException;
import org.apache.spark.sql.catalyst.analysis.NonEmptyNamespaceException;
import org.apache.spark.sql.catalyst.analysis.TableAlreadyExistsException;
import org.apache.spark.sql.classic.SparkSession;
import org.apache.spark.sql.connector.catalog.CatalogPlugin;
import org.apache.spark.sql.connector.catalog.Column;
import org.apache.spark.sql.connector.catalog.DelegatingCatalogExtension;
import org.apache.spark.sql.connector.catalog.Identifier;
import org.apache.spark.sql.connector.catalog.NamespaceChange;
import org.apache.spark.sql.connector.catalog.StagedTable;
import org.apache.spark.sql.connector.catalog.StagingTableCatalog;
import org.apache.spark.sql.connector.catalog.SupportsNamespaces;
import org.apache.spark.sql.connector.catalog.Table;
import org.apache.spark.sql.connector.catalog.TableCatalog;
import org.apache.spark.sql.connector.catalog.TableChange;
import org.apache.spark.sql.connector.catalog.TableInfo;
import org.apache.spark.sql.connector.expressions.Transform;
import org.apache.spark.sql.types.StructType;
import org.apache.spark.sql.util.CaseInsensitiveStringMap;

/**
 * A Unity Catalog catalog for local Spark: {@code spark.sql.catalog.main=databricks_emulator.UnityCatalog}.
 *
 * <p>Three-level names {@code main.bronze.t} are served by the session catalog (Delta's
 * {@code DeltaCatalog} when Delta is configured, so Delta DDL/DML, time travel, {@code DESCRIBE
 * HISTORY} and {@code RESTORE} work) under a database of this catalog's own, {@code main__bronze},
 * so that two UC catalogs never collide.
 *
 * <p>Unity Catalog is shared by every cluster of a workspace; the session catalog of local Spark
 * lives in one process. So the storage is the truth: schema {@code main.bronze} is the folder
 * {@code <root>/main/bronze} and table {@code main.bronze.t} the Delta table in
 * {@code <root>/main/bronze/t}. A process that meets a schema or table another process created
 * registers it in its session catalog on first use.
 *
 * <p>Option {@code root} (required): the local folder holding the catalogs.
 */
public class UnityCatalog extends DelegatingCatalogExtension implements StagingTableCatalog {
  private static final String SEP = "__";
  private String catalogName;
  private Path root;

  @Override
  public void initialize(String name, CaseInsensitiveStringMap options) {
    this.catalogName = name;
    String rootOption = options.get("root");
    if (rootOption == null || rootOption.isEmpty()) {
      throw new IllegalArgumentException(
          "spark.sql.catalog." + name + ".root must name the Unity Catalog storage folder");
    }
    this.root = Paths.get(rootOption.startsWith("file:") ? java.net.URI.create(rootOption).getPath() : rootOption);
  }

  @Override
  public String name() {
    return catalogName;
  }

  @Override
  public String[] defaultNamespace() {
    return new String[] {"default"};
  }

  // -- plumbing --------------------------------------------------------------------------------

  /** The session catalog of the session using us (set lazily: it is per session). */
  private synchronized CatalogPlugin session() {
    if (delegate == null) {
      setDelegateCatalog(SparkSession.active().sessionState().catalogManager().v2SessionCatalog());
    }
    return delegate;
  }

  private TableCatalog tables() {
    return (TableCatalog) session();
  }

  private SupportsNamespaces namespaces() {
    return (SupportsNamespaces) session();
  }

  private StagingTableCatalog staging() {
    CatalogPlugin plugin = session();
    if (!(plugin instanceof StagingTableCatalog)) {
      throw new UnsupportedOperationException(
          "Atomic CREATE/REPLACE TABLE AS SELECT in "
              + catalogName
              + " needs Delta's DeltaCatalog as the session catalog");
    }
    return (StagingTableCatalog) plugin;
  }

  private static String schemaOf(String[] namespace) throws NoSuchNamespaceException {
    if (namespace.length != 1) {
      throw new NoSuchNamespaceException(namespace);
    }
    return namespace[0].toLowerCase(java.util.Locale.ROOT);
  }

  private String database(String schema) {
    return catalogName + SEP + schema;
  }

  private Path schemaDir(String schema) {
    return root.resolve(catalogName).resolve(schema);
  }

  private Path tableDir(String schema, String table) {
    return schemaDir(schema).resolve(table.toLowerCase(java.util.Locale.ROOT));
  }

  private Identifier mapped(Identifier ident) throws NoSuchNamespaceException {
    return Identifier.of(new String[] {database(schemaOf(ident.namespace()))}, ident.name());
  }

  /** Registers the schema in this session if its folder exists (or it is "default"). */
  private boolean ensureSchema(String schema) {
    Path dir = schemaDir(schema);
    if (!Files.isDirectory(dir)) {
      if (!schema.equals("default")) {
        return false;
      }
      try {
        Files.createDirectories(dir);
      } catch (IOException e) {
        throw new UncheckedIOException(e);
      }
    }
    String[] db = new String[] {database(schema)};
    if (!namespaces().namespaceExists(db)) {
      Map<String, String> meta = new HashMap<>();
      meta.put(SupportsNamespaces.PROP_LOCATION, dir.toUri().toString());
      try {
        namespaces().createNamespace(db, meta);
      } catch (NamespaceAlreadyExistsException e) {
        // another thread of this session registered it
      }
    }
    return true;
  }

  /** Registers a Delta table another process created (its folder has a _delta_log). */
  private void ensureTable(Identifier ident) throws NoSuchNamespaceException {
    String schema = schemaOf(ident.namespace());
    if (!ensureSchema(schema)) {
      throw new NoSuchNamespaceException(new String[] {catalogName, schema});
    }
    Identifier target = mapped(ident);
    if (tables().tableExists(target)) {
      return;
    }
    Path dir = tableDir(schema, ident.name());
    if (Files.isDirectory(dir.resolve("_delta_log"))) {
      SparkSession.active()
          .sql(
              "CREATE TABLE IF NOT EXISTS spark_catalog.`"
                  + target.namespace()[0]
                  + "`.`"
                  + target.name()
                  + "` USING delta LOCATION '"
                  + dir.toUri().toString().replace("'", "\\'")
                  + "'");
    }
  }

  private static void deleteTree(Path dir) {
    if (!Files.exists(dir)) {
      return;
    }
    try (Stream<Path> walk = Files.walk(dir)) {
      walk.sorted(Comparator.reverseOrder()).forEach(p -> p.toFile().delete());
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
  }

  // -- namespaces ------------------------------------------------------------------------------

  @Override
  public String[][] listNamespaces() {
    List<String[]> out = new ArrayList<>();
    out.add(new String[] {"default"});
    Path dir = root.resolve(catalogName);
    if (Files.isDirectory(dir)) {
      try (Stream<Path> list = Files.list(dir)) {
        list.filter(Files::isDirectory)
            .map(p -> p.getFileName().toString())
            .filter(n -> !n.equals("default"))
            .sorted()
            .forEach(n -> out.add(new String[] {n}));
      } catch (IOException e) {
        throw new UncheckedIOException(e);
      }
    }
    return out.toArray(new String[0][]);
  }

  @Override
  public String[][] listNamespaces(String[] namespace) throws NoSuchNamespaceException {
    if (namespace.length == 0) {
      return listNamespaces();
    }
    if (!namespaceExists(namespace)) {
      throw new NoSuchNamespaceException(namespace);
    }
    return new String[0][];
  }

  @Override
  public boolean namespaceExists(String[] namespace) {
    return namespace.length == 1 && ensureSchema(namespace[0].toLowerCase(java.util.Locale.ROOT));
  }

  @Override
  public Map<String, String> loadNamespaceMetadata(String[] namespace)
      throws NoSuchNamespaceException {
    if (!namespaceExists(namespace)) {
      throw new NoSuchNamespaceException(namespace);
    }
    return namespaces().loadNamespaceMetadata(new String[] {database(schemaOf(namespace))});
  }

  @Override
  public void createNamespace(String[] namespace, Map<String, String> metadata)
      throws NamespaceAlreadyExistsException {
    if (namespace.length != 1) {
      throw new IllegalArgumentException(
          "A Unity Catalog schema is <catalog>.<schema>: " + String.join(".", namespace));
    }
    String schema = namespace[0].toLowerCase(java.util.Locale.ROOT);
    Path dir = schemaDir(schema);
    if (Files.isDirectory(dir)) {
      ensureSchema(schema);
      throw new NamespaceAlreadyExistsException(new String[] {catalogName, schema});
    }
    try {
      Files.createDirectories(dir);
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
    Map<String, String> meta = new HashMap<>(metadata);
    meta.put(SupportsNamespaces.PROP_LOCATION, dir.toUri().toString());
    namespaces().createNamespace(new String[] {database(schema)}, meta);
  }

  @Override
  public void alterNamespace(String[] namespace, NamespaceChange... changes)
      throws NoSuchNamespaceException {
    if (!namespaceExists(namespace)) {
      throw new NoSuchNamespaceException(namespace);
    }
    namespaces().alterNamespace(new String[] {database(schemaOf(namespace))}, changes);
  }

  @Override
  public boolean dropNamespace(String[] namespace, boolean cascade)
      throws NoSuchNamespaceException, NonEmptyNamespaceException {
    if (!namespaceExists(namespace)) {
      return false;
    }
    String schema = schemaOf(namespace);
    Identifier[] inside = listTables(namespace);
    if (inside.length > 0 && !cascade) {
      throw new NonEmptyNamespaceException(namespace);
    }
    for (Identifier t : inside) {
      dropTable(t);
    }
    namespaces().dropNamespace(new String[] {database(schema)}, true);
    deleteTree(schemaDir(schema));
    return true;
  }

  // -- tables ----------------------------------------------------------------------------------

  @Override
  public Identifier[] listTables(String[] namespace) throws NoSuchNamespaceException {
    String schema = schemaOf(namespace);
    if (!ensureSchema(schema)) {
      throw new NoSuchNamespaceException(namespace);
    }
    List<Identifier> out = new ArrayList<>();
    try (Stream<Path> list = Files.list(schemaDir(schema))) {
      list.filter(p -> Files.isDirectory(p.resolve("_delta_log")))
          .map(p -> p.getFileName().toString())
          .sorted()
          .forEach(n -> out.add(Identifier.of(new String[] {schema}, n)));
    } catch (IOException e) {
      throw new UncheckedIOException(e);
    }
    // Non-Delta tables of this session too.
    for (Identifier t : tables().listTables(new String[] {database(schema)})) {
      Identifier back = Identifier.of(new String[] {schema}, t.name());
      if (out.stream().noneMatch(i -> i.name().equals(back.name()))) {
        out.add(back);
      }
    }
    return out.toArray(new Identifier[0]);
  }

  @Override
  public Table loadTable(Identifier ident) throws NoSuchTableException {
    try {
      ensureTable(ident);
      return tables().loadTable(mapped(ident));
    } catch (NoSuchNamespaceException e) {
      throw new NoSuchTableException(ident);
    }
  }

  @Override
  public Table loadTable(Identifier ident, long timestamp) throws NoSuchTableException {
    try {
      ensureTable(ident);
      return tables().loadTable(mapped(ident), timestamp);
    } catch (NoSuchNamespaceException e) {
      throw new NoSuchTableException(ident);
    }
  }

  @Override
  public Table loadTable(Identifier ident, String version) throws NoSuchTableException {
    try {
      ensureTable(ident);
      return tables().loadTable(mapped(ident), version);
    } catch (NoSuchNamespaceException e) {
      throw new NoSuchTableException(ident);
    }
  }

  @Override
  public void invalidateTable(Identifier ident) {
    try {
      tables().invalidateTable(mapped(ident));
    } catch (NoSuchNamespaceException e) {
      // nothing cached
    }
  }

  @Override
  public boolean tableExists(Identifier ident) {
    try {
      loadTable(ident);
      return true;
    } catch (NoSuchTableException e) {
      return false;
    }
  }

  private Identifier forCreate(Identifier ident) throws NoSuchNamespaceException {
    String schema = schemaOf(ident.namespace());
    if (!ensureSchema(schema)) {
      throw new NoSuchNamespaceException(new String[] {catalogName, schema});
    }
    return mapped(ident);
  }

  @Override
  @SuppressWarnings("deprecation")
  public Table createTable(
      Identifier ident, StructType schema, Transform[] partitions, Map<String, String> properties)
      throws TableAlreadyExistsException, NoSuchNamespaceException {
    return tables().createTable(forCreate(ident), schema, partitions, properties);
  }

  @Override
  public Table createTable(
      Identifier ident, Column[] columns, Transform[] partitions, Map<String, String> properties)
      throws TableAlreadyExistsException, NoSuchNamespaceException {
    return tables().createTable(forCreate(ident), columns, partitions, properties);
  }

  @Override
  public Table alterTable(Identifier ident, TableChange... changes) throws NoSuchTableException {
    try {
      ensureTable(ident);
      return tables().alterTable(mapped(ident), changes);
    } catch (NoSuchNamespaceException e) {
      throw new NoSuchTableException(ident);
    }
  }

  @Override
  public boolean dropTable(Identifier ident) {
    try {
      ensureTable(ident);
      boolean dropped = tables().dropTable(mapped(ident));
      Path dir = tableDir(schemaOf(ident.namespace()), ident.name());
      boolean existed = Files.exists(dir);
      deleteTree(dir); // a managed Unity Catalog table's data goes with it
      return dropped || existed;
    } catch (NoSuchNamespaceException e) {
      return false;
    }
  }

  @Override
  public boolean purgeTable(Identifier ident) {
    return dropTable(ident);
  }

  @Override
  public void renameTable(Identifier oldIdent, Identifier newIdent) {
    throw new UnsupportedOperationException(
        "ALTER TABLE ... RENAME TO is not supported by the emulator's Unity Catalog");
  }

  // -- atomic CTAS / RTAS (saveAsTable, CREATE OR REPLACE TABLE): Delta's staging ---------------

  @Override
  @SuppressWarnings("deprecation")
  public StagedTable stageCreate(
      Identifier ident, StructType schema, Transform[] partitions, Map<String, String> properties)
      throws TableAlreadyExistsException, NoSuchNamespaceException {
    return staging().stageCreate(forCreate(ident), schema, partitions, properties);
  }

  @Override
  public StagedTable stageCreate(
      Identifier ident, Column[] columns, Transform[] partitions, Map<String, String> properties)
      throws TableAlreadyExistsException, NoSuchNamespaceException {
    return staging().stageCreate(forCreate(ident), columns, partitions, properties);
  }

  @Override
  public StagedTable stageCreate(Identifier ident, TableInfo info)
      throws TableAlreadyExistsException, NoSuchNamespaceException {
    return staging().stageCreate(forCreate(ident), info);
  }

  @Override
  @SuppressWarnings("deprecation")
  public StagedTable stageReplace(
      Identifier ident, StructType schema, Transform[] partitions, Map<String, String> properties)
      throws NoSuchNamespaceException, NoSuchTableException {
    ensureTable(ident);
    return staging().stageReplace(forCreate(ident), schema, partitions, properties);
  }

  @Override
  public StagedTable stageReplace(
      Identifier ident, Column[] columns, Transform[] partitions, Map<String, String> properties)
      throws NoSuchNamespaceException, NoSuchTableException {
    ensureTable(ident);
    return staging().stageReplace(forCreate(ident), columns, partitions, properties);
  }

  @Override
  public StagedTable stageReplace(Identifier ident, TableInfo info)
      throws NoSuchNamespaceException, NoSuchTableException {
    ensureTable(ident);
    return staging().stageReplace(forCreate(ident), info);
  }

  @Override
  @SuppressWarnings("deprecation")
  public StagedTable stageCreateOrReplace(
      Identifier ident, StructType schema, Transform[] partitions, Map<String, String> properties)
      throws NoSuchNamespaceException {
    ensureTable(ident);
    return staging().stageCreateOrReplace(forCreate(ident), schema, partitions, properties);
  }

  @Override
  public StagedTable stageCreateOrReplace(
      Identifier ident, Column[] columns, Transform[] partitions, Map<String, String> properties)
      throws NoSuchNamespaceException {
    ensureTable(ident);
    return staging().stageCreateOrReplace(forCreate(ident), columns, partitions, properties);
  }

  @Override
  public StagedTable stageCreateOrReplace(Identifier ident, TableInfo info)
      throws NoSuchNamespaceException {
    ensureTable(ident);
    return staging().stageCreateOrReplace(forCreate(ident), info);
  }
}
