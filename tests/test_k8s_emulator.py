"""The test harness itself: the hardened kmock emulator behaves as an API server does, and a real
kopf operator runs against it."""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from pathlib import Path

import aiohttp
import kopf
import pytest
import yaml

from k8s_emulator import running_emulator

REPO = Path(__file__).resolve().parents[1]
FTJ = 'tuneloop.dev/v1alpha1/finetunejobs'
FTJ_URL = '/apis/tuneloop.dev/v1alpha1/namespaces/default/finetunejobs'
CM_URL = '/api/v1/namespaces/default/configmaps'
JOBS_URL = '/apis/batch/v1/namespaces/default/jobs'


@pytest.fixture
def crd() -> dict:
    return next(doc for doc in yaml.safe_load_all((REPO / 'crds' / 'tuneloop.dev_crds.yaml').read_text())
                if doc['spec']['names']['kind'] == 'FineTuneJob')


@pytest.fixture
def manifest() -> dict:
    return yaml.safe_load((REPO / 'examples' / 'finetunejob.yaml').read_text())


def client(harness) -> aiohttp.ClientSession:
    return aiohttp.ClientSession(harness.url, headers={'Authorization': f'Bearer {harness.token}'})


async def call(session: aiohttp.ClientSession, method: str, path: str, **kwargs) -> tuple[int, dict]:
    async with session.request(method, path, **kwargs) as response:
        return response.status, await response.json()


@pytest.mark.asyncio
async def test_server_side_fields_generate_name_and_generation(crd, manifest):
    async with running_emulator([crd]) as k8s, client(k8s) as api:
        status, first = await call(api, 'POST', CM_URL, json={'metadata': {'generateName': 'cfg-'}, 'data': {'a': '1'}})
        assert status == 200
        meta = first['metadata']
        assert re.fullmatch(r'cfg-[a-z0-9]{5}', meta['name']) and meta['namespace'] == 'default'
        assert uuid.UUID(meta['uid']) and meta['generation'] == 1
        assert re.fullmatch(r'\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ', meta['creationTimestamp'])
        assert (first['apiVersion'], first['kind']) == ('v1', 'ConfigMap')
        _, second = await call(api, 'POST', CM_URL, json={'metadata': {'generateName': 'cfg-'}})
        assert second['metadata']['name'] != meta['name'] and second['metadata']['uid'] != meta['uid']
        assert int(second['metadata']['resourceVersion']) > int(meta['resourceVersion'])

        _, job = await call(api, 'POST', FTJ_URL, json=manifest)
        url, rv = f"{FTJ_URL}/{manifest['metadata']['name']}", job['metadata']['resourceVersion']
        _, labelled = await call(api, 'PATCH', url, json={'metadata': {'labels': {'a': 'b'}}},
                                 headers={'Content-Type': 'application/merge-patch+json'})
        assert labelled['metadata']['generation'] == 1 and int(labelled['metadata']['resourceVersion']) > int(rv)
        _, same = await call(api, 'PATCH', url, json={'metadata': {'labels': {'a': 'b'}}})
        assert same['metadata']['resourceVersion'] == labelled['metadata']['resourceVersion']  # a no-op write
        _, respecced = await call(api, 'PATCH', url, json={'spec': {'training': {'epochs': 3}}})
        assert respecced['metadata']['generation'] == 2 and respecced['metadata']['uid'] == job['metadata']['uid']
        assert [v['metadata']['resourceVersion'] for v in k8s.history(FTJ, 'default', 'acme-tickets')] == \
               [rv, labelled['metadata']['resourceVersion'], respecced['metadata']['resourceVersion']]


@pytest.mark.asyncio
async def test_errors_are_kubernetes_statuses():
    async with running_emulator() as k8s, client(k8s) as api:
        _, cm = await call(api, 'POST', CM_URL, json={'metadata': {'name': 'cfg'}, 'data': {'a': '1'}})
        status, body = await call(api, 'POST', CM_URL, json={'metadata': {'name': 'cfg'}})
        assert (status, body['kind'], body['reason']) == (409, 'Status', 'AlreadyExists')
        assert body['message'] == 'configmaps "cfg" already exists'

        stale = {'metadata': {'resourceVersion': '1'}, 'data': {'a': '2'}}
        status, body = await call(api, 'PATCH', f'{CM_URL}/cfg', json=stale)
        assert (status, body['reason']) == (409, 'Conflict') and 'the object has been modified' in body['message']
        status, _ = await call(api, 'PUT', f'{CM_URL}/cfg', json=dict(stale, metadata={'name': 'cfg', **stale['metadata']}))
        assert status == 409
        fresh = {'metadata': {'name': 'cfg', 'resourceVersion': cm['metadata']['resourceVersion']}, 'data': {'b': '3'}}
        status, body = await call(api, 'PUT', f'{CM_URL}/cfg', json=fresh)
        assert status == 200 and body['data'] == {'b': '3'}  # PUT replaces
        test_op = [{'op': 'test', 'path': '/metadata/resourceVersion', 'value': '1'}, {'op': 'remove', 'path': '/data'}]
        status, body = await call(api, 'PATCH', f'{CM_URL}/cfg', json=test_op,
                                  headers={'Content-Type': 'application/json-patch+json'})
        assert (status, body['reason']) == (422, 'Invalid')  # what kopf expects of its JSON patches
        assert k8s.get('v1/configmaps', 'default', 'cfg')['data'] == {'b': '3'}

        for method in ('GET', 'PATCH', 'DELETE'):
            status, body = await call(api, method, f'{CM_URL}/absent', json={})
            assert (status, body['reason'], body['message']) == (404, 'NotFound', 'configmaps "absent" not found')
        status, body = await call(api, 'POST', '/api/v1/namespaces/nowhere/configmaps', json={'metadata': {'name': 'x'}})
        assert (status, body['message']) == (404, 'namespaces "nowhere" not found')
        async with aiohttp.ClientSession(k8s.url) as anonymous:
            assert (await call(anonymous, 'GET', CM_URL))[0] == 401
        assert k8s.emulator.errors == []  # no unexpected exception on the server side


@pytest.mark.asyncio
async def test_status_is_a_subresource():
    job = {'apiVersion': 'batch/v1', 'kind': 'Job', 'metadata': {'name': 'train'},
           'spec': {'template': {'spec': {'containers': []}}}, 'status': {'succeeded': 9}}
    async with running_emulator() as k8s, client(k8s) as api:
        _, created = await call(api, 'POST', JOBS_URL, json=job)
        assert 'status' not in created  # set only through /status
        _, main = await call(api, 'PATCH', f'{JOBS_URL}/train', json={'spec': {'parallelism': 2}, 'status': {'active': 1}})
        assert main['spec']['parallelism'] == 2 and 'status' not in main and main['metadata']['generation'] == 2
        _, status = await call(api, 'PATCH', f'{JOBS_URL}/train/status',
                               json={'spec': {'parallelism': 5}, 'status': {'active': 1}})
        assert status['status'] == {'active': 1} and status['spec']['parallelism'] == 2
        assert status['metadata']['generation'] == 2
        assert (await call(api, 'GET', f'{JOBS_URL}/train/status'))[1]['status'] == {'active': 1}
        assert (await call(api, 'PATCH', f'{CM_URL}/x/status', json={}))[0] == 404  # configmaps have no /status

        succeeded = k8s.patch_status(('batch/v1', 'Job'), 'default', 'train', {'succeeded': 1, 'active': None})
        assert succeeded['status'] == {'succeeded': 1}


@pytest.mark.asyncio
async def test_crd_admission(crd, manifest):
    async with running_emulator([crd]) as k8s, client(k8s) as api:
        invalid = yaml.safe_load(yaml.safe_dump(manifest))
        invalid['metadata']['name'] = 'bad'
        invalid['spec']['method']['lora']['r'] = 0
        status, body = await call(api, 'POST', FTJ_URL, json=invalid)
        assert (status, body['kind'], body['reason']) == (422, 'Status', 'Invalid')
        assert body['message'].startswith('FineTuneJob.tuneloop.dev "bad" is invalid: spec.method.lora.r: ')
        assert [cause['field'] for cause in body['details']['causes']] == ['spec.method.lora.r']
        assert k8s.get(FTJ, 'default', 'bad') is None

        manifest['spec']['notAField'] = 'pruned'
        status, stored = await call(api, 'POST', FTJ_URL, json=manifest)
        assert status == 200 and 'notAField' not in stored['spec']
        assert stored['spec']['output'] == {'previewExamples': 3, 'mergeAdapter': False, 'export': [],
                                            'gguf': {'type': 'q8_0', 'checkRows': 30}}  # defaults applied
        assert stored['spec']['method']['lora']['targetModules'] == ['all-linear']
        assert (await call(api, 'PATCH', f'{FTJ_URL}/acme-tickets', json={'spec': {'method': {'lora': {'r': 0}}}}))[0] == 422
        status, body = await call(api, 'PATCH', f'{FTJ_URL}/acme-tickets/status', json={'status': {'phase': 'Bogus'}})
        assert status == 422 and 'status.phase' in body['message']
        assert k8s.patch_status(FTJ, 'default', 'acme-tickets', {'phase': 'Training'})['status']['message'] == ''  # default
        assert len(k8s.history(FTJ, 'default', 'acme-tickets')) == 2  # created, status set; nothing for the rejections


@pytest.mark.asyncio
async def test_deletion_cascades_to_owned_objects_and_waits_for_finalizers():
    async with running_emulator() as k8s:
        owner = k8s.create({'apiVersion': 'v1', 'kind': 'ConfigMap', 'metadata': {'name': 'owner', 'namespace': 'default'}})
        ref = {'apiVersion': 'v1', 'kind': 'ConfigMap', 'name': 'owner', 'uid': owner['metadata']['uid']}
        child = k8s.create({'apiVersion': 'batch/v1', 'kind': 'Job', 'metadata': {
            'name': 'child', 'namespace': 'default', 'ownerReferences': [ref], 'finalizers': ['x/y']}})
        child_ref = {'apiVersion': 'batch/v1', 'kind': 'Job', 'name': 'child', 'uid': child['metadata']['uid']}
        k8s.create({'apiVersion': 'v1', 'kind': 'ConfigMap', 'metadata': {
            'name': 'grandchild', 'namespace': 'default', 'ownerReferences': [child_ref]}})
        k8s.create({'apiVersion': 'v1', 'kind': 'ConfigMap', 'metadata': {'name': 'bystander', 'namespace': 'default'}})

        k8s.delete('v1/configmaps', 'default', 'owner')
        assert k8s.get('v1/configmaps', 'default', 'owner') is None
        assert k8s.get('batch/v1/jobs', 'default', 'child')['metadata']['deletionTimestamp']  # held by its finalizer
        assert k8s.get('v1/configmaps', 'default', 'grandchild') is not None
        k8s.patch('batch/v1/jobs', 'default', 'child', {'metadata': {'finalizers': None}})
        assert k8s.get('batch/v1/jobs', 'default', 'child') is None
        assert [cm['metadata']['name'] for cm in k8s.list_objects('v1/configmaps', 'default')] == ['bystander']
        assert k8s.history('v1/configmaps', 'default', 'grandchild')[-1] is None
        assert len(k8s.list_objects('v1/configmaps', include_deleted=True)) == 3


@pytest.mark.asyncio
async def test_watch_resumes_from_a_resource_version_with_no_gap():
    async with running_emulator() as k8s, client(k8s) as api:
        k8s.create({'apiVersion': 'v1', 'kind': 'ConfigMap', 'metadata': {'name': 'before'}})
        _, listing = await call(api, 'GET', CM_URL)
        assert [item['metadata']['name'] for item in listing['items']] == ['before']

        async def watch(**params) -> list[tuple[str, str]]:
            params = {'watch': 'true', 'timeoutSeconds': '0.5', **params}
            async with api.get(CM_URL, params=params) as response:
                return [(event['type'], event['object']['metadata']['name']) for event in
                        [yaml.safe_load(line) for line in (await response.read()).splitlines() if line]]

        since = listing['metadata']['resourceVersion']
        k8s.create({'apiVersion': 'v1', 'kind': 'ConfigMap', 'metadata': {'name': 'after', 'labels': {'x': 'y'}}})
        k8s.patch('v1/configmaps', 'default', 'before', {'data': {'a': '1'}})
        k8s.delete('v1/configmaps', 'default', 'after')
        started = time.monotonic()
        assert await watch(resourceVersion=since) == [('ADDED', 'after'), ('MODIFIED', 'before'), ('DELETED', 'after')]
        assert time.monotonic() - started < 3  # timeoutSeconds ends the stream
        assert await watch(resourceVersion=since, labelSelector='x=y') == [('ADDED', 'after'), ('DELETED', 'after')]
        assert await watch() == [('ADDED', 'before')]  # no resourceVersion: the current state, then live events

        async with api.get(CM_URL, params={'watch': 'true', 'timeoutSeconds': '2'}) as response:
            assert yaml.safe_load(await response.content.readline())['object']['metadata']['name'] == 'before'
            k8s.create({'apiVersion': 'v1', 'kind': 'ConfigMap', 'metadata': {'name': 'live'}})
            event = yaml.safe_load(await asyncio.wait_for(response.content.readline(), 2))
            assert (event['type'], event['object']['metadata']['name']) == ('ADDED', 'live')


@pytest.mark.asyncio
async def test_a_thousand_creates_stay_fast():
    async with running_emulator() as k8s, client(k8s) as api:
        started = time.monotonic()
        for index in range(1000):
            assert (await call(api, 'POST', CM_URL, json={'metadata': {'name': f'cm-{index}'}}))[0] == 200
        assert time.monotonic() - started < 10  # kmock 0.8 as such: ~80 s, quadratic
        assert len((await call(api, 'GET', CM_URL))[1]['items']) == 1000


@pytest.mark.asyncio
async def test_kubeconfig_login(tmp_path, monkeypatch):
    async with running_emulator() as k8s:
        monkeypatch.setenv('KUBECONFIG', str(k8s.write_kubeconfig(tmp_path / 'kubeconfig')))
        info = kopf.login_with_kubeconfig(settings=kopf.OperatorSettings())
        assert (info.server, info.token) == (k8s.url, 'test')
        async with aiohttp.ClientSession(headers={'Authorization': f'Bearer {info.token}'}) as session:
            async with session.get(f'{info.server}/api/v1/namespaces/{info.default_namespace}') as response:
                assert response.status == 200 and (await response.json())['status'] == {'phase': 'Active'}


@pytest.mark.asyncio
async def test_a_kopf_operator_creates_exactly_one_owned_configmap(crd, manifest, caplog):
    caplog.set_level(logging.DEBUG, logger='kopf')
    registry = kopf.OperatorRegistry()
    async with running_emulator([crd]) as k8s:

        @kopf.on.create('tuneloop.dev', 'v1alpha1', 'finetunejobs', id='create_fn', registry=registry)
        async def create_fn(body, name, namespace, patch, retry, **_):
            if retry == 0:  # once: kopf keeps its progress in status.kopf (through /status) and retries
                raise kopf.TemporaryError('not yet', delay=0.1)
            configmap = {'apiVersion': 'v1', 'kind': 'ConfigMap', 'metadata': {'generateName': f'{name}-'},
                         'data': {'model': body['spec']['baseModel']['name']}}
            kopf.adopt(configmap, owner=body)
            async with client(k8s) as api:
                status, created = await call(api, 'POST', f'/api/v1/namespaces/{namespace}/configmaps', json=configmap)
            assert status == 200, created
            kopf.info(body, reason='Created', message=f"ConfigMap {created['metadata']['name']}")  # an Event, generateName'd
            patch.status['phase'] = 'Validating'
            return {'configmap': created['metadata']['name']}

        async with k8s.kopf_operator(registry, namespaces=['default']):
            job = k8s.create(manifest)
            await k8s.wait_for(lambda: (k8s.get(FTJ, 'default', 'acme-tickets') or {}).get('status', {}).get('create_fn'))
            await asyncio.sleep(1)  # time enough for a buggy operator to run the handler twice, or loop on its patches
            k8s.delete(FTJ, 'default', 'acme-tickets')
            await asyncio.sleep(0.2)

        configmaps = k8s.list_objects('v1/configmaps', include_deleted=True)
        assert len(configmaps) == 1  # over the whole history: never a second one
        configmap = configmaps[0]
        assert configmap['metadata']['ownerReferences'] == [{
            'apiVersion': 'tuneloop.dev/v1alpha1', 'kind': 'FineTuneJob', 'name': 'acme-tickets',
            'uid': job['metadata']['uid'], 'controller': True, 'blockOwnerDeletion': True}]
        assert k8s.history('v1/configmaps', 'default', configmap['metadata']['name'])[-1] is None  # collected with its owner

        versions = [v for v in k8s.history(FTJ, 'default', 'acme-tickets') if v is not None]
        phases = [v.get('status', {}).get('phase') for v in versions]
        first = phases.index('Validating')
        assert set(phases[:first]) <= {None, 'Pending'} and set(phases[first:]) == {'Validating'}  # never lost
        assert 'Pending' in phases  # the CRD's default, applied once kopf wrote a status
        assert versions[-1]['status']['create_fn'] == {'configmap': configmap['metadata']['name']}
        assert any(v.get('status', {}).get('kopf', {}).get('progress', {}).get('create_fn', {}).get('retries') == 1
                   for v in versions)  # the retry was recorded in the status
        assert len(versions) <= 8, [v['metadata'] for v in versions]  # no patch loop
        assert {v['metadata']['generation'] for v in versions} == {1}  # kopf wrote metadata and status only

        events = k8s.list_objects('v1/events', 'default')
        assert [(e['reason'], e['message']) for e in events
                if e['metadata']['name'].startswith('kopf-event-')  # generateName
                and e['involvedObject']['uid'] == job['metadata']['uid']
                ] == [('Created', f"ConfigMap {configmap['metadata']['name']}")]
        assert k8s.emulator.errors == []
        problems = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name.startswith('kopf')
                    and r.getMessage() != "Handler 'create_fn' failed temporarily: not yet"]
        assert problems == []
