// The Kubernetes recipe (deploy/k8s): every manifest validates against the Kubernetes API schema
// (kubernetes-models' validators, offline), and the fields the recipe relies on are there: an
// Indexed Job whose --shards equals its completions, the shared claim mounted at the work
// directory, and a finetune Job with the same cluster flags on the same claim.
import assert from "node:assert/strict";
import { Job } from "kubernetes-models/batch/v1/Job";
import { PersistentVolumeClaim } from "kubernetes-models/v1/PersistentVolumeClaim";
import { parseAllDocuments } from "yaml";
import { resolveShard } from "../../src/pipeline/shard.ts";

const DIR = new URL("../../deploy/k8s/", import.meta.url).pathname;

// deno-lint-ignore no-explicit-any
type Obj = any;

async function load(name: string): Promise<Obj[]> {
  const docs = parseAllDocuments(await Deno.readTextFile(`${DIR}${name}`));
  return docs.map((d) => {
    assert.equal(d.errors.length, 0, `${name}: ${d.errors.map((e) => e.message).join("; ")}`);
    return d.toJS();
  });
}

/** Validates against the schema of its kind; throws naming the file and the bad field. */
function validate(name: string, obj: Obj): void {
  const models: Record<string, new (o: Obj) => { validate(): void }> = {
    "batch/v1 Job": Job,
    "v1 PersistentVolumeClaim": PersistentVolumeClaim,
  };
  const Model = models[`${obj.apiVersion} ${obj.kind}`];
  assert.ok(Model, `${name}: unexpected ${obj.apiVersion} ${obj.kind}`);
  try {
    new Model(obj).validate();
  } catch (e) {
    throw new Error(`${name}: ${(e as Error).message}`);
  }
}

/** The value after a flag in an argument list (undefined when absent). */
function flag(args: string[], name: string): string | undefined {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
}

/** The compress flags that decide the cluster units: they must match across the two Jobs. */
const CLUSTER_FLAGS = [
  "--model",
  "--out",
  "--work",
  "--bits",
  "--d",
  "--n",
  "--iters",
  "--seed",
  "--splits",
  "--init",
  "--restarts",
];

function claimMount(name: string, job: Obj): string {
  const pod = job.spec.template.spec;
  const vol = pod.volumes.find((v: Obj) => v.persistentVolumeClaim);
  assert.ok(vol, `${name}: no persistentVolumeClaim volume`);
  assert.equal(vol.persistentVolumeClaim.claimName, "cluscomp-work", `${name}: claim`);
  const mount = pod.containers[0].volumeMounts.find((m: Obj) => m.name === vol.name);
  assert.ok(mount, `${name}: the claim is not mounted`);
  return mount.mountPath;
}

Deno.test("deploy/k8s: manifests valid; Indexed Job shards match completions on a shared claim", async () => {
  const [pvc] = await load("pvc.yaml");
  const [cluster] = await load("cluster-job.yaml");
  const [finetune] = await load("finetune-job.yaml");
  validate("pvc.yaml", pvc);
  validate("cluster-job.yaml", cluster);
  validate("finetune-job.yaml", finetune);

  // The claim: shared by every pod at once.
  assert.equal(pvc.metadata.name, "cluscomp-work");
  assert.ok(pvc.spec.accessModes.includes("ReadWriteMany"), "the claim must be ReadWriteMany");

  // The cluster Job: Indexed, N completions, and each pod's compress is shard JOB_COMPLETION_INDEX
  // of --shards N, stopping after the cluster stage.
  const spec = cluster.spec;
  assert.equal(spec.completionMode, "Indexed");
  assert.ok(spec.completions >= 1);
  assert.ok(spec.parallelism >= 1 && spec.parallelism <= spec.completions);
  const pod = spec.template.spec;
  assert.ok(["Never", "OnFailure"].includes(pod.restartPolicy));
  const c = pod.containers[0];
  const args: string[] = [...c.command, ...c.args];
  assert.ok(args.join(" ").includes("tasks/compress.ts"), "runs compress");
  assert.equal(flag(args, "--stage"), "cluster");
  assert.equal(Number(flag(args, "--shards")), spec.completions, "--shards equals completions");
  assert.equal(flag(args, "--shard"), undefined, "the index comes from JOB_COMPLETION_INDEX");
  // What compress makes of it in the last pod.
  const last = resolveShard(undefined, flag(args, "--shards"), {
    JOB_COMPLETION_INDEX: String(spec.completions - 1),
  });
  assert.deepEqual(last, { index: spec.completions - 1, count: spec.completions });
  const mount = claimMount("cluster-job.yaml", cluster);
  for (const f of ["--model", "--out"]) {
    assert.ok(flag(args, f)?.startsWith(`${mount}/`), `${f} must be on the shared claim`);
  }

  // The finetune Job: one pod, the same cluster flags, no --stage, on the same claim.
  assert.equal(finetune.spec.completionMode, undefined);
  assert.equal(finetune.spec.completions, 1);
  const fc = finetune.spec.template.spec.containers[0];
  const fargs: string[] = [...fc.command, ...fc.args];
  assert.equal(flag(fargs, "--stage"), undefined);
  assert.equal(flag(fargs, "--shards"), undefined);
  assert.ok(flag(fargs, "--calib"), "finetuning needs --calib");
  assert.equal(claimMount("finetune-job.yaml", finetune), mount);
  for (const f of CLUSTER_FLAGS) {
    assert.equal(flag(fargs, f), flag(args, f), `${f} differs between the two Jobs`);
  }
  assert.equal(fc.image, c.image);
});

Deno.test("deploy/k8s: the validator catches a broken manifest", async () => {
  const [cluster] = await load("cluster-job.yaml");
  cluster.spec.completions = "eight";
  assert.throws(() => validate("cluster-job.yaml", cluster), /completions must be integer/);
  const [again] = await load("cluster-job.yaml");
  delete again.spec.template.spec.containers[0].volumeMounts[0].name;
  assert.throws(
    () => validate("cluster-job.yaml", again),
    /volumeMounts\/0 must have required property name/,
  );
});
